/* Ping-pong over TLS on loopback TCP: the client SSL_writes `size` bytes and SSL_reads
 * them back, `iters` times, against a forked server doing the reverse.  Prints the CPU
 * ns of both processes per SSL_read/SSL_write call (4 calls a round trip) and the wall
 * ns per round trip: bench/bench_tls.py runs it with the TLS uprobes attached and not.
 *
 *   tls_loop PORT ITERS SIZE CERT KEY
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000LL + t.tv_nsec;
}

static long long cpu_ns(int who)
{
    struct rusage r;
    getrusage(who, &r);
    return (r.ru_utime.tv_sec + r.ru_stime.tv_sec) * 1000000000LL +
           (r.ru_utime.tv_usec + r.ru_stime.tv_usec) * 1000LL;
}

static int full_read(SSL *s, char *buf, int n)
{
    int got = 0;
    while (got < n) {
        int r = SSL_read(s, buf + got, n - got);
        if (r <= 0)
            return -1;
        got += r;
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 6) {
        fprintf(stderr, "usage: tls_loop PORT ITERS SIZE CERT KEY\n");
        return 2;
    }
    int port = atoi(argv[1]), iters = atoi(argv[2]), size = atoi(argv[3]);
    char *buf = calloc(1, size);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int ls = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(ls, (struct sockaddr *)&a, sizeof(a)) || listen(ls, 1)) {
        perror("bind/listen");
        return 1;
    }
    pid_t child = fork();
    if (child == 0) {
        SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
        if (SSL_CTX_use_certificate_file(ctx, argv[4], SSL_FILETYPE_PEM) != 1 ||
            SSL_CTX_use_PrivateKey_file(ctx, argv[5], SSL_FILETYPE_PEM) != 1) {
            ERR_print_errors_fp(stderr);
            _exit(1);
        }
        int c = accept(ls, 0, 0);
        SSL *s = SSL_new(ctx);
        SSL_set_fd(s, c);
        if (SSL_accept(s) != 1)
            _exit(1);
        for (int i = 0; i < iters; i++) {
            if (full_read(s, buf, size) || SSL_write(s, buf, size) != size)
                _exit(1);
        }
        SSL_shutdown(s);
        _exit(0);
    }
    close(ls);
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    int c = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(c, (struct sockaddr *)&a, sizeof(a))) {
        perror("connect");
        return 1;
    }
    setsockopt(c, IPPROTO_TCP, 1 /* TCP_NODELAY */, &one, sizeof(one));
    SSL *s = SSL_new(ctx);
    SSL_set_fd(s, c);
    if (SSL_connect(s) != 1) {
        ERR_print_errors_fp(stderr);
        return 1;
    }
    long long cpu0 = cpu_ns(RUSAGE_SELF), t0 = now_ns();
    for (int i = 0; i < iters; i++) {
        if (SSL_write(s, buf, size) != size || full_read(s, buf, size))
            return 1;
    }
    long long t1 = now_ns(), cpu1 = cpu_ns(RUSAGE_SELF);
    int st = 0;
    waitpid(child, &st, 0);
    long long child_cpu = cpu_ns(RUSAGE_CHILDREN); /* the server's whole life */
    printf("%.1f %.1f %.1f\n", (double)(cpu1 - cpu0) / (2.0 * iters),
           (double)child_cpu / (2.0 * iters), (double)(t1 - t0) / iters);
    return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : 1;
}
