/* longhaul's C shim over DPDK: the few things Rust cannot call directly because DPDK defines
 * them `static inline` (burst I/O, mbuf alloc/free and field access) or as a thread-local
 * (rte_errno). Every function is a thin forwarder; no logic lives here. bindgen reads this
 * header, so the DPDK headers it includes are the ones the bindings are generated from. */
#ifndef LONGHAUL_DPDK_SHIM_H
#define LONGHAUL_DPDK_SHIM_H

#include <stdint.h>
#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_ethdev.h>
#include <rte_lcore.h>
#include <rte_log.h>
#include <rte_mbuf.h>
#include <rte_mempool.h>

/* What the Rust side needs of one mbuf: its data, length, room and receive flags. */
struct lh_mbuf_view {
	uint8_t *data;
	uint16_t len;      /* data_len of the first (only) segment */
	uint16_t room;     /* bytes from data to the end of the buffer */
	uint16_t nb_segs;
	uint64_t ol_flags;
};

uint16_t lh_rx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n);
uint16_t lh_tx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n);
struct rte_mbuf *lh_pktmbuf_alloc(struct rte_mempool *pool);
void lh_pktmbuf_free(struct rte_mbuf *m);
void lh_mbuf_view(const struct rte_mbuf *m, struct lh_mbuf_view *out);
/* Sets data_len and pkt_len of a single-segment mbuf. */
void lh_mbuf_set_len(struct rte_mbuf *m, uint16_t len);
/* Requests transmit offloads: ol_flags plus the header lengths the NIC needs to find L3/L4. */
void lh_mbuf_set_tx_offload(struct rte_mbuf *m, uint64_t ol_flags, uint16_t l2_len, uint16_t l3_len);
/* 1 when the link is up, 0 when down, negative errno on failure; *speed_mbps gets the speed. */
int lh_link_status(uint16_t port, uint32_t *speed_mbps);
int lh_errno(void);
unsigned lh_lcore_id(void);

#endif
