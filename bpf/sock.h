/* fd -> struct sock, and the socket's addresses, with offsets from the running
 * kernel's BTF (-DOFF_* flags from agent/probes/btf.py), never from header structs:
 * the headers bcc compiles with may belong to another kernel. */
#ifndef ZT_SOCK_H
#define ZT_SOCK_H
#include "abi.h"

#define ZT_S_IFMT 00170000
#define ZT_S_IFSOCK 0140000
#define ZT_AF_INET 2
#define ZT_AF_INET6 10
#define ZT_IPPROTO_TCP 6
#define ZT_IPPROTO_UDP 17
#define ZT_TCP_CLOSE 7
#define ZT_TCP_SYN_SENT 2
#define ZT_TCP_SYN_RECV 3

#define ZT_READ(dst, base, off) bpf_probe_read_kernel(&(dst), sizeof(dst), (char *)(base) + (off))

/* The struct sock behind fd of the current task, or 0 when fd is no socket.  Costs
 * six kernel reads for a non-socket fd: the price of tracing sockets that were
 * opened before the agent started.  *filep receives the struct file when given. */
static __always_inline __u64 zt_fd_to_sock_file(int fd, void **filep)
{
    void *task = (void *)bpf_get_current_task();
    void *files = 0, *fdt = 0, *file = 0, *inode = 0, *socket = 0;
    void **fd_array = 0;
    unsigned int max_fds = 0;
    unsigned short mode = 0;
    __u64 sk = 0;

    if (fd < 0)
        return 0;
    ZT_READ(files, task, OFF_TASK_FILES);
    ZT_READ(fdt, files, OFF_FILES_FDT);
    ZT_READ(max_fds, fdt, OFF_FDT_MAX_FDS);
    if ((unsigned int)fd >= max_fds)
        return 0;
    ZT_READ(fd_array, fdt, OFF_FDT_FD);
    bpf_probe_read_kernel(&file, sizeof(file), &fd_array[fd]);
    if (!file)
        return 0;
    ZT_READ(inode, file, OFF_FILE_INODE);
    ZT_READ(mode, inode, OFF_INODE_MODE);
    if ((mode & ZT_S_IFMT) != ZT_S_IFSOCK)
        return 0;
    ZT_READ(socket, file, OFF_FILE_PRIVATE);
    ZT_READ(sk, socket, OFF_SOCKET_SK);
    if (filep)
        *filep = file;
    return sk;
}

#define zt_fd_to_sock(fd) zt_fd_to_sock_file((fd), 0)

/* 1 when this close() drops the file's last reference: after fork or dup the socket
 * lives on in the other holder (a forking server's parent closes its copy at once). */
static __always_inline int zt_last_reference(void *file)
{
    long count = 0;
    ZT_READ(count, file, OFF_FILE_COUNT);
#if ZT_FILE_COUNT_KIND == 0
    return count <= 0; /* file_ref_t: 0 means one reference */
#else
    return count <= 1; /* atomic_long_t f_count: counts from one */
#endif
}

/* The process's name (its thread group leader's comm), not the calling thread's. */
static __always_inline void zt_process_comm(char *dst)
{
    void *task = (void *)bpf_get_current_task();
    void *leader = 0;
    ZT_READ(leader, task, OFF_TASK_GROUP_LEADER);
    if (!leader || bpf_probe_read_kernel(dst, 16, (char *)leader + OFF_TASK_COMM) != 0)
        bpf_get_current_comm(dst, 16);
}

/* Family, transport and ports of an inet socket; 0 when it is not TCP/UDP over IP. */
static __always_inline int zt_sock_basics(__u64 sk, __u8 *family, __u8 *transport,
                                          __u16 *lport, __u16 *rport)
{
    __u16 fam = 0, proto = 0, num = 0, dport = 0;
    ZT_READ(fam, sk, OFF_SK_FAMILY);
    if (fam != ZT_AF_INET && fam != ZT_AF_INET6)
        return 0;
    ZT_READ(proto, sk, OFF_SK_PROTOCOL);
    if (proto != ZT_IPPROTO_TCP && proto != ZT_IPPROTO_UDP)
        return 0;
    ZT_READ(num, sk, OFF_SK_NUM);
    ZT_READ(dport, sk, OFF_SK_DPORT);
    *family = fam;
    *transport = proto;
    *lport = num;
    *rport = __builtin_bswap16(dport);
    return 1;
}

static __always_inline __u32 zt_sock_netns(__u64 sk)
{
    void *net = 0;
    __u32 inum = 0;
    ZT_READ(net, sk, OFF_SK_NET);
    ZT_READ(inum, net, OFF_NET_NS_INUM);
    return inum;
}

static __always_inline void zt_sock_addrs(__u64 sk, __u8 family, struct zt_event *ev)
{
    if (family == ZT_AF_INET) {
        ZT_READ(*(__u32 *)ev->laddr, sk, OFF_SK_RCV_SADDR);
        ZT_READ(*(__u32 *)ev->raddr, sk, OFF_SK_DADDR);
    } else {
        bpf_probe_read_kernel(ev->laddr, 16, (char *)sk + OFF_SK_V6_RCV_SADDR);
        bpf_probe_read_kernel(ev->raddr, 16, (char *)sk + OFF_SK_V6_DADDR);
    }
}

/* Peer from a user sockaddr (unconnected UDP sendto/recvfrom/sendmsg/recvmsg). */
static __always_inline void zt_user_peer(void *uaddr, struct zt_event *ev)
{
    __u16 fam = 0, port = 0;
    if (!uaddr)
        return;
    bpf_probe_read_user(&fam, sizeof(fam), uaddr);
    if (fam != ZT_AF_INET && fam != ZT_AF_INET6)
        return;
    bpf_probe_read_user(&port, sizeof(port), (char *)uaddr + 2);
    if (fam == ZT_AF_INET)
        bpf_probe_read_user(ev->raddr, 4, (char *)uaddr + 4);
    else
        bpf_probe_read_user(ev->raddr, 16, (char *)uaddr + 8);
    ev->rport = __builtin_bswap16(port);
    ev->flags |= ZT_F_PEER_FROM_MSG;
}
#endif
