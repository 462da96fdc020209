/* Maps shared by the probes of one agent. */
#ifndef ZT_MAPS_H
#define ZT_MAPS_H
#include "abi.h"

#ifndef ZT_PAYLOAD_MAX
#define ZT_PAYLOAD_MAX 1024 /* power of two; set by the agent (--payload-bytes) */
#endif
#ifndef ZT_RINGBUF_PAGES
#define ZT_RINGBUF_PAGES 4096
#endif
#ifndef ZT_IOV_MAX
#define ZT_IOV_MAX 8
#endif
#ifndef ZT_MMSG_MAX
#define ZT_MMSG_MAX 4
#endif

/* A syscall in flight on a thread, from enter to exit. */
struct zt_active {
    __u64 ts_enter;
    __u64 sk;
    __u64 buf;     /* buffer, iovec array, user_msghdr or mmsghdr array */
    __u64 count;   /* iovec count / vlen */
    __u64 addr;    /* user sockaddr (sendto/recvfrom) */
    __s32 fd;
    __u32 seq;
    __u8 sys;
    __u8 has_seq;
};

/* Per-connection state keyed by struct sock address. */
struct zt_sockstate {
    __u64 sent;
    __u64 recvd;
    __u8 role;
    __u8 midstream;
    __u8 seen; /* an event of this socket reached the agent: it wants to hear of the close */
};

struct zt_scratch {
    __u64 unsignalled; /* events submitted on this CPU since the last wake-up */
    struct zt_event ev;
    __u8 payload[2 * ZT_PAYLOAD_MAX];
};

BPF_RINGBUF_OUTPUT(events, ZT_RINGBUF_PAGES);
BPF_ARRAY(config, struct zt_config, 1);
BPF_PERCPU_ARRAY(drops, __u64, ZT_DROP_SLOTS);
BPF_PERCPU_ARRAY(scratch, struct zt_scratch, 1);
BPF_HASH(active, __u32, struct zt_active, 16384);
BPF_TABLE("lru_hash", __u64, struct zt_sockstate, socks, 65536);
BPF_HASH(filter_pids, __u32, __u8, 4096);
BPF_HASH(filter_cgroups, __u64, __u8, 4096);
BPF_HASH(filter_ports, __u16, __u8, 1024);
BPF_HASH(filter_netns, __u32, __u8, 1024);

static __always_inline void zt_count_drop(int slot)
{
    __u64 *n = drops.lookup(&slot);
    if (n)
        __sync_fetch_and_add(n, 1);
}

/* Submit without a wake-up except every cfg->wakeup_events events on this CPU: a
 * wake-up per event would cost an IPI per syscall, and the agent also polls on a short
 * timer.  (bcc 0.26 has no ringbuf_query, so the count is ours.) */
static __always_inline void zt_submit(struct zt_scratch *s, __u64 size, struct zt_config *cfg)
{
    __u64 flags = BPF_RB_NO_WAKEUP;
    if (++s->unsignalled >= cfg->wakeup_events) {
        s->unsignalled = 0;
        flags = BPF_RB_FORCE_WAKEUP;
    }
    if (events.ringbuf_output(&s->ev, size, flags) != 0)
        zt_count_drop(ZT_DROP_RINGBUF_FULL);
}
#endif
