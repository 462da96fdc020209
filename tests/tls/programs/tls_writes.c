/* SSL_write on a non-blocking socket that fills: the calls that return WANT_WRITE and
 * are retried with the same arguments ("retry"), or, with
 * SSL_MODE_ENABLE_PARTIAL_WRITE, that take part of what they are offered and are called
 * again with the rest ("partial").  The writes of bpf/tls.c have no return probe: this
 * is what they must get right (tests/tls/test_tls_writes.py: every plaintext byte
 * emitted once, at the right seq).
 *
 *   tls_writes PORT CERT KEY retry|partial|reuse MSGS SIZE
 *
 * A forked server waits before reading (the client's socket buffers fill), reads
 * MSGS * SIZE bytes, checks them (byte i of message m is (m * 7 + i) & 0xff) and answers
 * "ok".  The client prints "wants=W partials=P bytes=B": W calls returned WANT_WRITE,
 * P returned fewer bytes than offered.
 * "reuse": as "retry", then the client's last SSL call is a write ("bye"), the socket
 * is disconnected without SSL_shutdown (connect(AF_UNSPEC)) and connected again, plain:
 * "plain\n", echoed by the server.  The same struct sock at a new sequence number is
 * what a closed socket whose memory the kernel hands at once to a new connection looks
 * like to the probes, built without depending on the slab allocator's timing. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

static void fill(unsigned char *buf, int m, int size)
{
    for (int i = 0; i < size; i++)
        buf[i] = (unsigned char)((m * 7 + i) & 0xff);
}

static int serve(int ls, const char *cert, const char *key, int msgs, int size, int reuse)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (SSL_CTX_use_certificate_file(ctx, cert, SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1)
        return 1;
    int c = accept(ls, 0, 0), small = 4096;
    setsockopt(c, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
    SSL *s = SSL_new(ctx);
    SSL_set_fd(s, c);
    if (SSL_accept(s) != 1)
        return 1;
    usleep(300000); /* the client's writes find the buffers full */
    unsigned char *want = malloc(size), *got = malloc(size);
    for (int m = 0; m < msgs; m++) {
        fill(want, m, size);
        for (int n = 0; n < size;) {
            int r = SSL_read(s, got + n, size - n);
            if (r <= 0)
                return 1;
            n += r;
        }
        if (memcmp(want, got, size))
            return 3;
    }
    if (SSL_write(s, "ok", 2) != 2)
        return 1;
    if (reuse) {
        char bye[3];
        if (SSL_read(s, bye, 3) != 3)
            return 1;
        int p = accept(ls, 0, 0);
        char line[6];
        if (p < 0 || read(p, line, 6) != 6 || write(p, line, 6) != 6)
            return 4;
        close(p);
        return 0;
    }
    SSL_shutdown(s);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 7) {
        fprintf(stderr, "usage: tls_writes PORT CERT KEY retry|partial MSGS SIZE\n");
        return 2;
    }
    int port = atoi(argv[1]), partial = !strcmp(argv[4], "partial");
    int reuse = !strcmp(argv[4], "reuse");
    int msgs = atoi(argv[5]), size = atoi(argv[6]);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int ls = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(ls, (struct sockaddr *)&a, sizeof(a)) || listen(ls, 1)) {
        perror("bind/listen");
        return 1;
    }
    pid_t child = fork();
    if (child == 0)
        _exit(serve(ls, argv[2], argv[3], msgs, size, reuse));
    close(ls);
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    int c = socket(AF_INET, SOCK_STREAM, 0), small = 4096;
    setsockopt(c, SOL_SOCKET, SO_SNDBUF, &small, sizeof(small));
    if (connect(c, (struct sockaddr *)&a, sizeof(a))) {
        perror("connect");
        return 1;
    }
    SSL *s = SSL_new(ctx);
    SSL_set_fd(s, c);
    if (SSL_connect(s) != 1) {
        ERR_print_errors_fp(stderr);
        return 1;
    }
    if (partial)
        SSL_set_mode(s, SSL_MODE_ENABLE_PARTIAL_WRITE);
    fcntl(c, F_SETFL, fcntl(c, F_GETFL) | O_NONBLOCK);
    unsigned char *buf = malloc(size);
    long wants = 0, partials = 0, bytes = 0;
    for (int m = 0; m < msgs; m++) {
        fill(buf, m, size);
        for (int off = 0; off < size;) {
            /* retry: the same arguments after WANT_WRITE; partial: the rest */
            int r = SSL_write(s, buf + off, size - off);
            if (r > 0) {
                if (r < size - off)
                    partials++;
                off += r;
                bytes += r;
                continue;
            }
            if (SSL_get_error(s, r) != SSL_ERROR_WANT_WRITE) {
                ERR_print_errors_fp(stderr);
                return 1;
            }
            wants++;
            struct pollfd p = {.fd = c, .events = POLLOUT};
            poll(&p, 1, 5000);
        }
    }
    char ok[2];
    for (;;) {
        int r = SSL_read(s, ok, 2);
        if (r == 2)
            break;
        if (r <= 0 && SSL_get_error(s, r) != SSL_ERROR_WANT_READ)
            return 1;
        struct pollfd p = {.fd = c, .events = POLLIN};
        poll(&p, 1, 5000);
    }
    if (reuse) {
        /* the last SSL call a write, then the socket gone and a plain one made */
        while (SSL_write(s, "bye", 3) != 3) {
            struct pollfd p = {.fd = c, .events = POLLOUT};
            poll(&p, 1, 5000);
        }
        usleep(100000); /* the server has read "bye" */
        struct sockaddr none = {.sa_family = AF_UNSPEC}; /* a reset, the sock kept */
        fcntl(c, F_SETFL, fcntl(c, F_GETFL) & ~O_NONBLOCK);
        if (connect(c, &none, sizeof(none)))
            return 6;
        int q = c;
        char echo[6];
        if (connect(q, (struct sockaddr *)&a, sizeof(a)) || write(q, "plain\n", 6) != 6 ||
            read(q, echo, 6) != 6 || memcmp(echo, "plain\n", 6))
            return 5;
        close(q);
    }
    int st = 0;
    waitpid(child, &st, 0);
    printf("wants=%ld partials=%ld bytes=%ld\n", wants, partials, bytes);
    return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : 1;
}
