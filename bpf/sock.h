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
#define ZT_TCP_LISTEN 10
#define ZT_TCP_SYN_SENT 2
#define ZT_TCP_SYN_RECV 3

#define ZT_READ(dst, base, off) bpf_probe_read_kernel(&(dst), sizeof(dst), (char *)(base) + (off))

/* Fields that lie close together in one kernel struct are read with one helper call:
 * each bpf_probe_read_kernel costs ~25-35 ns here (bench_probes' run-time statistics:
 * a write to /dev/null, 7 reads, 281 ns a run), the bytes themselves next to nothing.
 * ZT_BLOCK(name, lo, hi) declares a block covering [lo, hi) of a struct; ZT_FIELD reads a
 * member out of it.  A block wider than ZT_BLOCK_MAX (another kernel's layout) falls
 * back to one read per member, so the probes still load. */
#define ZT_MIN(a, b) ((a) < (b) ? (a) : (b))
#define ZT_MAX(a, b) ((a) > (b) ? (a) : (b))
#ifndef ZT_BLOCK_MAX
#define ZT_BLOCK_MAX 128
#endif

/* struct fdtable: max_fds and fd */
#define ZT_FDT_LO ZT_MIN(OFF_FDT_MAX_FDS, OFF_FDT_FD)
#define ZT_FDT_HI ZT_MAX(OFF_FDT_MAX_FDS + 4, OFF_FDT_FD + 8)
/* struct file: f_op, private_data (the socket) and f_inode */
#define ZT_FILE_LO ZT_MIN(ZT_MIN(OFF_FILE_INODE, OFF_FILE_PRIVATE), OFF_FILE_FOP)
#define ZT_FILE_HI (ZT_MAX(ZT_MAX(OFF_FILE_INODE, OFF_FILE_PRIVATE), OFF_FILE_FOP) + 8)
/* struct sock_common: addresses, ports, family, network namespace */
#define ZT_SKC_LO ZT_MIN(ZT_MIN(ZT_MIN(OFF_SK_DADDR, OFF_SK_RCV_SADDR), \
                                ZT_MIN(OFF_SK_DPORT, OFF_SK_NUM)), \
                         ZT_MIN(ZT_MIN(OFF_SK_FAMILY, OFF_SK_NET), \
                                ZT_MIN(OFF_SK_V6_DADDR, OFF_SK_V6_RCV_SADDR)))
#define ZT_SKC_HI ZT_MAX(ZT_MAX(ZT_MAX(OFF_SK_DADDR + 4, OFF_SK_RCV_SADDR + 4), \
                                ZT_MAX(OFF_SK_DPORT + 2, OFF_SK_NUM + 2)), \
                         ZT_MAX(ZT_MAX(OFF_SK_FAMILY + 2, OFF_SK_NET + 8), \
                                ZT_MAX(OFF_SK_V6_DADDR + 16, OFF_SK_V6_RCV_SADDR + 16)))

#define ZT_BLOCK_WORDS(lo, hi) (((hi) - (lo) + 7) / 8)
#define ZT_BLOCK_FITS(lo, hi) ((hi) - (lo) <= ZT_BLOCK_MAX)
/* A block of struct bytes [lo, hi) at base, read at once when it fits; else only the
 * base is kept and each member is read on its own. */
struct zt_block_fdt {
    __u64 base;
    __u64 w[ZT_BLOCK_FITS(ZT_FDT_LO, ZT_FDT_HI) ? ZT_BLOCK_WORDS(ZT_FDT_LO, ZT_FDT_HI) : 1];
};
struct zt_block_file {
    __u64 base;
    __u64 w[ZT_BLOCK_FITS(ZT_FILE_LO, ZT_FILE_HI) ? ZT_BLOCK_WORDS(ZT_FILE_LO, ZT_FILE_HI) : 1];
};
struct zt_skc {
    __u64 base;
    __u64 w[ZT_BLOCK_FITS(ZT_SKC_LO, ZT_SKC_HI) ? ZT_BLOCK_WORDS(ZT_SKC_LO, ZT_SKC_HI) : 1];
};
/* Load block b (one of the structs above) of the struct at base; 0 when the read failed. */
#define ZT_BLOCK_LOAD(b, ptr, lo, hi)                                                      \
    ((b)->base = (__u64)(ptr),                                                          \
     ZT_BLOCK_FITS(lo, hi)                                                              \
         ? bpf_probe_read_kernel((b)->w, sizeof((b)->w), (char *)(ptr) + (lo)) == 0     \
         : 1)
/* Member at offset off of a loaded block (dst: a variable or an lvalue). */
#define ZT_FIELD(dst, b, off, lo, hi)                                                      \
    do {                                                                                \
        if (ZT_BLOCK_FITS(lo, hi))                                                      \
            __builtin_memcpy(&(dst), (char *)(b)->w + ((off) - (lo)), sizeof(dst));     \
        else                                                                            \
            ZT_READ(dst, (b)->base, off);                                               \
    } while (0)
struct zt_in6 {
    __u8 b[16];
};
#define ZT_SKC_LOAD(c, sk) ZT_BLOCK_LOAD(c, sk, ZT_SKC_LO, ZT_SKC_HI)
#define ZT_SKC_FIELD(dst, c, off) ZT_FIELD(dst, c, off, ZT_SKC_LO, ZT_SKC_HI)

/* &socket_file_ops, learnt from the first socket found by its inode (every socket file
 * is made by sock_alloc_file with those operations; the symbol is not in kallsyms): from
 * then on a file is a socket when its f_op says so, one kernel read fewer on every fd
 * looked up, and the only test a non-socket fd pays (nginx closes the file it served at
 * every request). */
BPF_ARRAY(sock_fops, __u64, 1);

/* The struct sock behind fd of the current task, or 0 when fd is no socket.  Costs
 * five kernel reads for a non-socket fd: the price of tracing sockets that were
 * opened before the agent started.  *filep receives the struct file when given. */
static __always_inline __u64 zt_fd_to_sock_file(int fd, void **filep)
{
    void *task = (void *)bpf_get_current_task();
    void *files = 0, *fdt = 0, *file = 0, *inode = 0, *socket = 0;
    void **fd_array = 0;
    unsigned int max_fds = 0;
    unsigned short mode = 0;
    __u64 sk = 0, fop = 0;
    struct zt_block_fdt t;
    struct zt_block_file f;

    if (fd < 0)
        return 0;
    ZT_READ(files, task, OFF_TASK_FILES);
    ZT_READ(fdt, files, OFF_FILES_FDT);
    if (!ZT_BLOCK_LOAD(&t, fdt, ZT_FDT_LO, ZT_FDT_HI))
        return 0;
    ZT_FIELD(max_fds, &t, OFF_FDT_MAX_FDS, ZT_FDT_LO, ZT_FDT_HI);
    if ((unsigned int)fd >= max_fds)
        return 0;
    ZT_FIELD(fd_array, &t, OFF_FDT_FD, ZT_FDT_LO, ZT_FDT_HI);
    bpf_probe_read_kernel(&file, sizeof(file), &fd_array[fd]);
    if (!file || !ZT_BLOCK_LOAD(&f, file, ZT_FILE_LO, ZT_FILE_HI))
        return 0;
    ZT_FIELD(fop, &f, OFF_FILE_FOP, ZT_FILE_LO, ZT_FILE_HI);
    int zero = 0;
    __u64 *sock_ops = sock_fops.lookup(&zero);
    if (sock_ops && *sock_ops) {
        if (fop != *sock_ops)
            return 0;
    } else {
        ZT_FIELD(inode, &f, OFF_FILE_INODE, ZT_FILE_LO, ZT_FILE_HI);
        ZT_READ(mode, inode, OFF_INODE_MODE);
        if ((mode & ZT_S_IFMT) != ZT_S_IFSOCK)
            return 0;
        if (sock_ops && fop)
            *sock_ops = fop;
    }
    ZT_FIELD(socket, &f, OFF_FILE_PRIVATE, ZT_FILE_LO, ZT_FILE_HI);
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

/* The process's name (its thread group leader's comm), not the calling thread's: the
 * leader's own syscalls (single-threaded servers: nginx's workers) take it from the
 * helper, without the two kernel reads. */
static __always_inline void zt_process_comm(char *dst)
{
    __u64 id = bpf_get_current_pid_tgid();
    if ((__u32)id == (__u32)(id >> 32)) {
        bpf_get_current_comm(dst, 16);
        return;
    }
    void *task = (void *)bpf_get_current_task();
    void *leader = 0;
    ZT_READ(leader, task, OFF_TASK_GROUP_LEADER);
    if (!leader || bpf_probe_read_kernel(dst, 16, (char *)leader + OFF_TASK_COMM) != 0)
        bpf_get_current_comm(dst, 16);
}

/* Family, transport and ports of an inet socket from its loaded sock_common block c;
 * 0 when it is not TCP/UDP over IP. */
static __always_inline int zt_skc_basics(struct zt_skc *c, __u8 *family, __u8 *transport,
                                         __u16 *lport, __u16 *rport)
{
    __u16 fam = 0, proto = 0, num = 0, dport = 0;
    ZT_SKC_FIELD(fam, c, OFF_SK_FAMILY);
    if (fam != ZT_AF_INET && fam != ZT_AF_INET6)
        return 0;
    ZT_READ(proto, c->base, OFF_SK_PROTOCOL);
    if (proto != ZT_IPPROTO_TCP && proto != ZT_IPPROTO_UDP)
        return 0;
    ZT_SKC_FIELD(num, c, OFF_SK_NUM);
    ZT_SKC_FIELD(dport, c, OFF_SK_DPORT);
    *family = fam;
    *transport = proto;
    *lport = num;
    *rport = __builtin_bswap16(dport);
    return 1;
}

/* The same for a socket whose block is not loaded yet. */
static __always_inline int zt_sock_basics(__u64 sk, __u8 *family, __u8 *transport,
                                          __u16 *lport, __u16 *rport)
{
    struct zt_skc c;
    if (!ZT_SKC_LOAD(&c, sk))
        return 0;
    return zt_skc_basics(&c, family, transport, lport, rport);
}

static __always_inline __u32 zt_skc_netns(struct zt_skc *c)
{
    void *net = 0;
    __u32 inum = 0;
    ZT_SKC_FIELD(net, c, OFF_SK_NET);
    ZT_READ(inum, net, OFF_NET_NS_INUM);
    return inum;
}

static __always_inline __u32 zt_sock_netns(__u64 sk)
{
    void *net = 0;
    __u32 inum = 0;
    ZT_READ(net, sk, OFF_SK_NET);
    ZT_READ(inum, net, OFF_NET_NS_INUM);
    return inum;
}

static __always_inline void zt_skc_addrs(struct zt_skc *c, __u8 family, struct zt_event *ev)
{
    if (family == ZT_AF_INET) {
        ZT_SKC_FIELD(*(__u32 *)ev->laddr, c, OFF_SK_RCV_SADDR);
        ZT_SKC_FIELD(*(__u32 *)ev->raddr, c, OFF_SK_DADDR);
    } else {
        ZT_SKC_FIELD(*(struct zt_in6 *)ev->laddr, c, OFF_SK_V6_RCV_SADDR);
        ZT_SKC_FIELD(*(struct zt_in6 *)ev->raddr, c, OFF_SK_V6_DADDR);
    }
}

static __always_inline void zt_sock_addrs(__u64 sk, __u8 family, struct zt_event *ev)
{
    struct zt_skc c;
    if (ZT_SKC_LOAD(&c, sk))
        zt_skc_addrs(&c, family, ev);
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
