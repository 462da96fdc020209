/* One HTTPS GET with OpenSSL linked into the executable (libssl.a, libcrypto.a), for
 * tests/tls/test_tls_exec.py: the agent must find SSL_read/SSL_write in this file's
 * own symbol table.
 *
 *   static_client ADDR PORT PATH   prints [status, body length] as JSON; exit 0
 *
 * Certificate verification is off: a self-signed test certificate. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: %s ADDR PORT PATH\n", argv[0]);
        return 2;
    }
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
    if (inet_pton(AF_INET, argv[1], &sa.sin_addr) != 1)
        return 2;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        perror("connect");
        return 1;
    }
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    SSL *ssl = SSL_new(ctx);
    SSL_set_fd(ssl, fd);
    if (SSL_connect(ssl) != 1) {
        fprintf(stderr, "handshake failed\n");
        return 1;
    }
    char req[512];
    int n = snprintf(req, sizeof(req),
                     "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", argv[3],
                     argv[1]);
    if (n <= 0 || n >= (int)sizeof(req) || SSL_write(ssl, req, n) != n) {
        fprintf(stderr, "write failed\n");
        return 1;
    }
    /* the whole answer (the server closes after it: Connection: close) */
    static char resp[1 << 16];
    size_t got = 0;
    for (;;) {
        int r = SSL_read(ssl, resp + got, (int)(sizeof(resp) - 1 - got));
        if (r <= 0)
            break;
        got += (size_t)r;
        if (got >= sizeof(resp) - 1)
            break;
    }
    resp[got] = 0;
    int status = 0;
    char *body = strstr(resp, "\r\n\r\n");
    if (sscanf(resp, "HTTP/1.%*d %d", &status) != 1 || !body) {
        fprintf(stderr, "bad answer\n");
        return 1;
    }
    printf("[%d, %zu]\n", status, got - (size_t)(body + 4 - resp));
    SSL_shutdown(ssl);
    SSL_free(ssl);
    SSL_CTX_free(ctx);
    close(fd);
    return 0;
}
