/* Network hops (issue 18): TC classifiers on clsact ingress/egress that report when a
 * packet carrying the first byte of a socket write passes an interface.
 *
 * Its own BPF object (agent/probes/tc.py), apart from the socket tracer:
 *  - a raw tracepoint on tcp_sendmsg_locked (or, on kernels without it, the
 *    write-family syscalls' entry) reads the TCP write_seq of the socket (the sequence
 *    number of the write's first byte) into `starts`, a direct-mapped table found by
 *    that seq alone;
 *  - reads mark too (ZT_TC_READ_MARKS, kernels with sock:sock_recv_length): when a
 *    reader has consumed everything its socket received (copied_seq == rcv_nxt), the
 *    next byte to arrive starts the peer's next message in a request/response
 *    exchange; that seq is marked with the reader's key (role 1), as is rcv_nxt when a
 *    connection becomes established.  So an agent that sees only the receiving end
 *    (the other end on another node) still matches the incoming message's packets;
 *    a write mark of the same seq, when both ends are on this node, replaces it;
 *  - marks are taken only for sockets of the netns in `mark_netns`, unless
 *    `mark_all` is set (one agent per kernel: every netns of the node);
 *  - marks are taken only for sampled messages: 1 in 2^k by a hash of the seq
 *    (`tc_sample`, k set by the agent to keep the hop records under a budget).  The
 *    seq is the one thing every end and hook of a message sees, so a writer's mark, a
 *    reader's mark and every node's agent make the same choice without talking: a
 *    message has all its hops or none.  Unsampled messages leave no slot, so their
 *    packets take the classifier's cheap miss path and make no record;
 *  - the TC programs parse IPv4 and IPv6 TCP, look the segment's seq up in `starts`, and for a
 *    hit emit a struct zt_hop into the ring `hops`.  Nothing else reaches user space.
 *
 * Why seq alone: NAT (MASQUERADE, DNAT) rewrites addresses and may rewrite either port,
 * never the TCP sequence number.  To keep an unrelated flow whose segment happens to
 * carry the same 32-bit seq from matching, the hit must also share at least one port
 * with the writer's socket (in either orientation): a NAT rewrites at most one side
 * per direction.  The residual collision risk is in docs/network.md. */
#include <uapi/linux/ptrace.h>
#include "sock.h"

#define ZT_ETH_P_IP 0x0800
#define ZT_ETH_P_IPV6 0x86DD
/* whatever we saw, the packet goes on and the hook's next program or filter runs:
 * TCX_NEXT under tcx, TC_ACT_UNSPEC for a direct-action clsact filter (where 0,
 * TC_ACT_OK, would end the chain before filters of lower priority) */
#define ZT_TC_NEXT -1

/* A message start: one slot of `starts`, found by its seq (zt_slot). */
struct zt_start {
    __u64 ts;      /* when marked; 0: an empty slot */
    __u32 netns;   /* writer socket's netns inode */
    __u32 tgid;
    __u16 lport;   /* writer socket, host byte order */
    __u16 rport;
    __u8 role;     /* 0: the socket writes this seq; 1: it expects to read it next */
    __u8 _pad[3];
    __u32 seq;     /* the whole seq: a slot answers only for its own */
    __u32 gen;     /* odd while a mark rewrites the slot (a seqlock for the TC side) */
};

/* One sighting of a message start at a hook.  Mirrored in agent/probes/tc.py. */
struct zt_hop {
    __u64 ts;
    __u32 netns;        /* inode of the interface's netns (skb->dev->nd_net) */
    __u32 _pad0;
    __u64 start_ts;     /* struct zt_start.ts: the write */
    __u32 seq;
    __u32 ifindex;
    __u32 writer_netns;
    __u8 saddr[16];     /* the packet's, network byte order; IPv4: the first 4 bytes */
    __u8 daddr[16];
    __u32 len;          /* skb->len */
    __u16 sport;        /* the packet's, host byte order */
    __u16 dport;
    __u16 writer_lport;
    __u16 writer_rport;
    __u16 payload;      /* TCP payload bytes (of a GSO packet: all of it) */
    __u8 direction;     /* 0 egress, 1 ingress */
    __u8 tcp_flags;
    __u16 window;       /* raw TCP window field */
    __u8 role;          /* struct zt_start.role: writer_* name the writer or the reader */
    __u8 family;        /* 4 or 6: the packet's IP version; 88 bytes in all */
};

/* Message starts, direct-mapped: slot = Fibonacci hash of the seq (spreads the
 * arithmetic progressions of one connection's seqs).  A mark is one slot write, ~50 ns;
 * an LRU hash (the first design) cost ~750 ns per update of a new key on a full map
 * (bench/bench_tc.py, BPF_PROG_TEST_RUN), i.e. most of a mark.  A mark whose slot
 * another seq takes before its packets have passed is lost, never mismatched: the
 * slot keeps the whole seq.  docs/network.md has the loss arithmetic. */
#define ZT_STARTS_BITS 17
BPF_ARRAY(starts, struct zt_start, 1 << ZT_STARTS_BITS);

#define ZT_BARRIER() asm volatile("" ::: "memory")

static __always_inline struct zt_start *zt_slot(__u32 seq)
{
    __u32 i = (seq * 2654435761u) >> (32 - ZT_STARTS_BITS);
    return starts.lookup(&i);
}
BPF_RINGBUF_OUTPUT(hops, 256);
BPF_ARRAY(tc_self, __u32, 1); /* the agent's tgid: its own writes are not marked */
/* hop records the ring had no room for: counted, exported as a metric (never silent) */
BPF_PERCPU_ARRAY(tc_lost, __u64, 1);
BPF_HASH(mark_netns, __u32, __u8, 4096); /* netns inodes whose sockets are marked */
BPF_ARRAY(mark_all, __u32, 1);           /* 1: every netns (the agent's whole node) */
/* [0] k: messages are marked 1 in 2^k (k = 0: every one), chosen by zt_sampled;
 * [1] the lowest k in force over the last second: a packet whose seq is unsampled at
 * it cannot start a marked message, and skips the slot table (agent/probes/tc.py
 * set_sampling: lowered at once, raised a second after the marks) */
BPF_ARRAY(tc_sample, __u32, 2);

/* The message starting at seq is sampled.  The top k bits of a multiplicative hash of
 * the seq (a different multiplier from zt_slot's, so the sampled seqs still spread over
 * every slot); one connection's seqs (an arithmetic progression for equal messages)
 * are spread by it too. */
static __always_inline int zt_sampled_at(__u32 seq, int which)
{
    __u32 *k = tc_sample.lookup(&which);
    if (!k || *k == 0)
        return 1;
    __u32 shift = *k > 31 ? 1 : 32 - *k;
    return ((seq * 0x85EBCA77u) >> shift) == 0;
}
#define zt_sampled(seq) zt_sampled_at((seq), 0)

static __always_inline int zt_netns_marked(__u32 netns)
{
    int zero = 0;
    __u32 *all = mark_all.lookup(&zero);
    if (all && *all)
        return 1;
    return mark_netns.lookup(&netns) != 0;
}

/* A marked socket's ports and netns; 0 when it is no TCP socket (IPv4 or IPv6: a
 * dual-stack socket, Go's listeners, nginx's [::], carries IPv4 packets under an
 * AF_INET6 family, and its seqs are keyed the same).  skc_dport, skc_num, skc_family
 * and skc_net lie within 64 bytes of each other in struct sock_common (BTF says where):
 * one kernel read of that span instead of four (a read is ~25-30 ns, most of a mark's
 * cost; bench/bench_tc.py's marks part).  sock.h's field-by-field reads otherwise. */
#if OFF_SK_DPORT < OFF_SK_NUM && OFF_SK_NUM < OFF_SK_FAMILY && \
    OFF_SK_FAMILY < OFF_SK_NET && OFF_SK_NET + 8 - OFF_SK_DPORT <= 64
static __always_inline int zt_tcp_sock(__u64 sk, __u16 *lport, __u16 *rport, void **netp)
{
    __u8 b[OFF_SK_NET + 8 - OFF_SK_DPORT];
    __u16 fam = 0, proto = 0, num = 0, dport = 0;
    void *net = 0;
    if (bpf_probe_read_kernel(b, sizeof(b), (char *)sk + OFF_SK_DPORT) != 0)
        return 0;
    __builtin_memcpy(&fam, b + (OFF_SK_FAMILY - OFF_SK_DPORT), sizeof(fam));
    if (fam != ZT_AF_INET && fam != ZT_AF_INET6)
        return 0;
    ZT_READ(proto, sk, OFF_SK_PROTOCOL);
    if (proto != ZT_IPPROTO_TCP)
        return 0;
    __builtin_memcpy(&num, b + (OFF_SK_NUM - OFF_SK_DPORT), sizeof(num));
    __builtin_memcpy(&dport, b + 0, sizeof(dport));
    __builtin_memcpy(&net, b + (OFF_SK_NET - OFF_SK_DPORT), sizeof(net));
    if (!net)
        return 0;
    *lport = num;
    *rport = __builtin_bswap16(dport);
    *netp = net;
    return 1;
}
static __always_inline __u32 zt_net_inum(void *net)
{
    __u32 inum = 0;
    ZT_READ(inum, net, OFF_NET_NS_INUM);
    return inum;
}
#else
static __always_inline int zt_tcp_sock(__u64 sk, __u16 *lport, __u16 *rport, void **netp)
{
    __u8 family = 0, transport = 0;
    if (!zt_sock_basics(sk, &family, &transport, lport, rport))
        return 0;
    if (transport != ZT_IPPROTO_TCP)
        return 0;
    *netp = (void *)sk; /* zt_net_inum reads the netns from the socket here */
    return 1;
}
static __always_inline __u32 zt_net_inum(void *sk)
{
    return zt_sock_netns((__u64)sk);
}
#endif

/* Mark the seq a TCP socket writes next (role 0) or expects to read next (role 1).
 * The seq is read first, so that an unsampled message costs one kernel read: at
 * tcp_sendmsg_locked (`tcp`) sk is a TCP socket; a read mark's sk may be any socket,
 * whose bytes at rcv_nxt's offset are then no seq (a bounded read of kernel memory,
 * faults caught), and zt_tcp_sock turns it away when that value passes the sample.
 * The syscall fallback's sk may be any socket too and is checked first, as before. */
static __always_inline int zt_mark_seq(__u64 sk, __u32 tgid, __u8 role, int tcp)
{
    __u16 lport = 0, rport = 0;
    void *net = 0;
    __u32 seq = 0;
    if (tcp || role == 1) {
        ZT_READ(seq, sk, role == 0 ? OFF_TCP_WRITE_SEQ : OFF_TCP_RCV_NXT);
        if (!zt_sampled(seq))
            return 0;
    }
    if (!zt_tcp_sock(sk, &lport, &rport, &net))
        return 0;
    if (role == 0) {
        if (!tcp) {
            ZT_READ(seq, sk, OFF_TCP_WRITE_SEQ);
            if (!zt_sampled(seq))
                return 0;
        }
    } else {
        __u32 copied = 0;
        ZT_READ(copied, sk, OFF_TCP_COPIED_SEQ);
        if (copied != seq) /* unread bytes wait: the next arrival continues them */
            return 0;
    }
    __u32 netns = zt_net_inum(net);
    if (!zt_netns_marked(netns))
        return 0;
    struct zt_start *st = zt_slot(seq);
    if (!st)
        return 0;
    if (role == 1 && st->ts && st->seq == seq && st->role == 0)
        return 0; /* a writer on this node named it first: keep its key */
    /* a seqlock: gen odd while the slot is rewritten; the TC side reads gen before and
     * after copying the slot and drops a copy that may mix two marks (two marks of one
     * slot at once, on two CPUs, can still mix: a key of no span, never a wrong one) */
    __u32 gen = *(volatile __u32 *)&st->gen;
    *(volatile __u32 *)&st->gen = gen | 1;
    ZT_BARRIER();
    st->ts = bpf_ktime_get_ns();
    st->netns = netns;
    st->tgid = tgid;
    st->lport = lport;
    st->rport = rport;
    st->role = role;
    st->seq = seq;
    ZT_BARRIER();
    *(volatile __u32 *)&st->gen = (gen | 1) + 1;
    return 0;
}

static __always_inline int zt_mark_sock(__u64 sk, __u32 tgid, int tcp)
{
    return zt_mark_seq(sk, tgid, 0, tcp);
}

static __always_inline int zt_not_self(__u32 tgid)
{
    int zero = 0;
    __u32 *self = tc_self.lookup(&zero);
    return !(self && *self == tgid);
}

#ifdef ZT_TC_MARK_RAW
/* tcp_sendmsg_locked (kernels >= 6.10): fires only for TCP sends, with the socket at
 * hand (no fd walk, no cost on other syscalls), once per chunk of up to size_goal bytes
 * of a send: write_seq is then the seq of that chunk's first byte.  The first chunk's
 * is the write's; the others (every ~64 KiB of a large write) are marked too, and the
 * agent ignores them as it does any write that starts no message. */
RAW_TRACEPOINT_PROBE(tcp_sendmsg_locked)
{
    __u32 tgid = bpf_get_current_pid_tgid() >> 32;
    if (!zt_not_self(tgid))
        return 0;
    return zt_mark_sock((__u64)ctx->args[0], tgid, 1);
}
#endif

#ifdef ZT_TC_READ_MARKS
/* After every recvmsg (any socket; zt_mark_seq keeps TCP/IPv4 of marked netns). */
RAW_TRACEPOINT_PROBE(sock_recv_length)
{
    int ret = (int)ctx->args[1];
    int flags = (int)ctx->args[2];
    if (ret <= 0 || (flags & 2 /* MSG_PEEK */))
        return 0;
    return zt_mark_seq((__u64)ctx->args[0], 0, 1, 0);
}

/* A connection established (either end): its first incoming byte is rcv_nxt. */
RAW_TRACEPOINT_PROBE(inet_sock_set_state)
{
    if ((int)ctx->args[2] != 1 /* TCP_ESTABLISHED */)
        return 0;
    return zt_mark_seq((__u64)ctx->args[0], 0, 1, 0);
}
#endif

#ifndef ZT_TC_MARK_RAW
/* Older kernels: the write-family syscalls' entry, socket found from the fd. */
static __always_inline int zt_mark_write(int fd)
{
    __u32 tgid = bpf_get_current_pid_tgid() >> 32;
    if (!zt_not_self(tgid))
        return 0;
    __u64 sk = zt_fd_to_sock(fd);
    if (!sk)
        return 0;
    return zt_mark_sock(sk, tgid, 0);
}

TRACEPOINT_PROBE(syscalls, sys_enter_write) { return zt_mark_write(args->fd); }
TRACEPOINT_PROBE(syscalls, sys_enter_writev) { return zt_mark_write(args->fd); }
TRACEPOINT_PROBE(syscalls, sys_enter_sendto) { return zt_mark_write(args->fd); }
TRACEPOINT_PROBE(syscalls, sys_enter_sendmsg) { return zt_mark_write(args->fd); }
#endif

/* The netns of the device the packet is at.  bpf_get_netns_cookie() would name the
 * netns of skb->sk while the sending socket is still attached (seen at the host end of
 * a pod's veth), so the device's own netns is read: a TC program's context is the
 * kernel's struct sk_buff, and OFF_SKB_DEV / OFF_DEV_ND_NET come from BTF (tc.py). */
static __always_inline __u32 zt_skb_netns(struct __sk_buff *skb)
{
    void *dev = 0, *net = 0;
    __u32 inum = 0;
    bpf_probe_read_kernel(&dev, sizeof(dev), (char *)skb + OFF_SKB_DEV);
    if (!dev)
        return 0;
    bpf_probe_read_kernel(&net, sizeof(net), (char *)dev + OFF_DEV_ND_NET);
    if (!net)
        return 0;
    bpf_probe_read_kernel(&inum, sizeof(inum), (char *)net + OFF_NET_NS_INUM);
    return inum;
}

/* n header bytes at off into buf: straight from the packet when they are in its linear
 * part (the usual case: a load each, no helper call), else bpf_skb_load_bytes
 * (headers in paged fragments).  0 when the packet is shorter. */
#define ZT_HDR(skb, data, data_end, off, buf)                                        \
    ({                                                                               \
        int _ok = 0;                                                                 \
        void *_p = (data) + (off);                                                   \
        if (_p + sizeof(buf) <= (data_end)) {                                        \
            __builtin_memcpy((buf), _p, sizeof(buf));                                \
            _ok = 1;                                                                 \
        } else {                                                                     \
            _ok = bpf_skb_load_bytes((skb), (off), (buf), sizeof(buf)) == 0;         \
        }                                                                            \
        _ok;                                                                         \
    })

static __always_inline int zt_tc(struct __sk_buff *skb, int l3off, __u8 direction)
{
    void *data = (void *)(long)skb->data;
    void *data_end = (void *)(long)skb->data_end;
    int l4off, payload;
    __u8 v6;
    __u8 ip[20]; /* IPv4 header; of IPv6 the first 8 bytes, then both addresses */
    __u8 ip6[40];
    if (skb->protocol == __builtin_bswap16(ZT_ETH_P_IP)) {
        if (!ZT_HDR(skb, data, data_end, l3off, ip))
            return ZT_TC_NEXT;
        if ((ip[0] >> 4) != 4 || ip[9] != ZT_IPPROTO_TCP)
            return ZT_TC_NEXT;
        if (((ip[6] & 0x1f) | ip[7]) != 0) /* a non-first fragment: no TCP header */
            return ZT_TC_NEXT;
        int ihl = (ip[0] & 0xf) * 4;
        if (ihl < 20)
            return ZT_TC_NEXT;
        l4off = l3off + ihl;
        payload = ((((int)ip[2] << 8) | ip[3])) - ihl;
        v6 = 0;
    } else if (skb->protocol == __builtin_bswap16(ZT_ETH_P_IPV6)) {
        if (!ZT_HDR(skb, data, data_end, l3off, ip6))
            return ZT_TC_NEXT;
        /* TCP right after the fixed header; extension headers (rare on TCP paths:
         * fragments, hop-by-hop options) are not walked, docs/network.md */
        if ((ip6[0] >> 4) != 6 || ip6[6] != ZT_IPPROTO_TCP)
            return ZT_TC_NEXT;
        l4off = l3off + 40;
        payload = ((int)ip6[4] << 8) | ip6[5]; /* 0 for a jumbogram: skipped below */
        v6 = 1;
    } else {
        return ZT_TC_NEXT;
    }
    __u8 tcp[20];
    if (l4off > 255 || !ZT_HDR(skb, data, data_end, l4off, tcp))
        return ZT_TC_NEXT;
    int doff = (tcp[12] >> 4) * 4;
    payload -= doff;
    if (payload <= 0 || doff < 20)
        return ZT_TC_NEXT;
    __u32 seq = ((__u32)tcp[4] << 24) | ((__u32)tcp[5] << 16) | ((__u32)tcp[6] << 8) | tcp[7];
    /* no marked message starts here: the slot table (5 MB, a cache miss a packet) is
     * left alone */
    if (!zt_sampled_at(seq, 1))
        return ZT_TC_NEXT;
    struct zt_start *st = zt_slot(seq);
    if (!st)
        return ZT_TC_NEXT;
    __u32 gen = *(volatile __u32 *)&st->gen;
    ZT_BARRIER();
    struct zt_start m = *st;
    ZT_BARRIER();
    /* a mark rewrote the slot meanwhile (gen moved or odd): its fields could mix */
    if (m.seq != seq || !m.ts || (gen & 1) || *(volatile __u32 *)&st->gen != gen)
        return ZT_TC_NEXT;
    __u16 sport = ((__u16)tcp[0] << 8) | tcp[1];
    __u16 dport = ((__u16)tcp[2] << 8) | tcp[3];
    if (sport != m.lport && dport != m.rport && sport != m.rport && dport != m.lport)
        return ZT_TC_NEXT;
    /* written in place in the ring (no stack copy); every byte is set, the reserved
     * space is not zeroed */
    struct zt_hop *h = hops.ringbuf_reserve(sizeof(struct zt_hop));
    if (!h) {
        int zero = 0;
        __u64 *lost = tc_lost.lookup(&zero);
        if (lost)
            *lost += 1;
        return ZT_TC_NEXT;
    }
    h->ts = bpf_ktime_get_ns();
    h->netns = zt_skb_netns(skb);
    h->_pad0 = 0;
    h->start_ts = m.ts;
    h->seq = seq;
    h->ifindex = skb->ifindex;
    h->writer_netns = m.netns;
    h->writer_lport = m.lport;
    h->writer_rport = m.rport;
    /* addresses from the header already read: a miss (almost every packet) pays none */
    if (v6) {
        __builtin_memcpy(h->saddr, ip6 + 8, 16);
        __builtin_memcpy(h->daddr, ip6 + 24, 16);
        h->family = 6;
    } else {
        __builtin_memset(h->saddr, 0, 16);
        __builtin_memset(h->daddr, 0, 16);
        __builtin_memcpy(h->saddr, ip + 12, 4);
        __builtin_memcpy(h->daddr, ip + 16, 4);
        h->family = 4;
    }
    h->len = skb->len;
    h->sport = sport;
    h->dport = dport;
    h->payload = payload > 0xffff ? 0xffff : payload;
    h->direction = direction;
    h->tcp_flags = tcp[13];
    h->window = ((__u16)tcp[14] << 8) | tcp[15];
    h->role = m.role;
    /* no wake-up: the agent drains on a 50 ms timer, and a hop's record is wanted only
     * when its trace is emitted (after 0.5 s of quiet), so no IPI per packet */
    hops.ringbuf_submit(h, BPF_RB_NO_WAKEUP);
    return ZT_TC_NEXT;
}

/* Ethernet devices (veth, bridge, NIC): the IP header follows 14 bytes of MAC header.
 * L3 devices (tun, wireguard, ...): the packet starts at the IP header. */
int zt_tc_eth_egress(struct __sk_buff *skb) { return zt_tc(skb, 14, 0); }
int zt_tc_eth_ingress(struct __sk_buff *skb) { return zt_tc(skb, 14, 1); }
int zt_tc_l3_egress(struct __sk_buff *skb) { return zt_tc(skb, 0, 0); }
int zt_tc_l3_ingress(struct __sk_buff *skb) { return zt_tc(skb, 0, 1); }
