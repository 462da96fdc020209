/* Tight syscall loops for overhead measurement; prints CPU ns per iteration.
 *   syscall_loop tcp N      write 100 B on a loopback TCP connection, read it back
 *   syscall_loop rr N       request/response: the client writes 100 B, the server reads
 *                           them and writes 100 B back, the client reads them (every
 *                           syscall turns its socket's direction, as in HTTP keep-alive)
 *   syscall_loop devnull N  write 100 B to /dev/null
 * CPU time (CLOCK_PROCESS_CPUTIME_ID) rather than wall time: on a 2-core VM wall time
 * is dominated by scheduler wake-ups; the probes' cost lands in this process's
 * system time because tracepoint programs run in the caller's context. */
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static long long cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int main(int argc, char **argv)
{
    long n = argc > 2 ? atol(argv[2]) : 100000;
    int port = argc > 3 ? atoi(argv[3]) : 47001;
    char buf[100];
    memset(buf, 'x', sizeof(buf));
    if (strcmp(argv[1], "devnull") == 0) {
        int fd = open("/dev/null", O_WRONLY);
        long long t0 = cpu_ns();
        for (long i = 0; i < n; i++)
            if (write(fd, buf, sizeof(buf)) != sizeof(buf)) return 1;
        printf("%.1f\n", (double)(cpu_ns() - t0) / n);
        return 0;
    }
    int ls = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(ls, (void *)&a, sizeof(a)) || listen(ls, 1)) { perror("bind"); return 1; }
    int c = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(c, (void *)&a, sizeof(a))) { perror("connect"); return 1; }
    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    int s = accept(ls, NULL, NULL);
    int rr = strcmp(argv[1], "rr") == 0;
    setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    long long t0 = cpu_ns();
    for (long i = 0; i < n; i++) {
        if (write(c, buf, sizeof(buf)) != sizeof(buf)) return 1;
        if (read(s, buf, sizeof(buf)) != sizeof(buf)) return 1; /* loopback delivers inline */
        if (!rr)
            continue;
        if (write(s, buf, sizeof(buf)) != sizeof(buf)) return 1;
        if (read(c, buf, sizeof(buf)) != sizeof(buf)) return 1;
    }
    printf("%.1f\n", (double)(cpu_ns() - t0) / n);
    return 0;
}
