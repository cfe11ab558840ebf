/* See shim.h. The static asserts pin the flag values mirrored in Rust (pmd/dpdk/sys.rs), so a
 * DPDK that renumbers them fails the build instead of corrupting frames. */
#include "shim.h"

_Static_assert(RTE_ETH_RX_OFFLOAD_IPV4_CKSUM == (1ULL << 1), "rx ipv4 cksum offload bit");
_Static_assert(RTE_ETH_RX_OFFLOAD_UDP_CKSUM == (1ULL << 2), "rx udp cksum offload bit");
_Static_assert(RTE_ETH_RX_OFFLOAD_TCP_CKSUM == (1ULL << 3), "rx tcp cksum offload bit");
_Static_assert(RTE_ETH_TX_OFFLOAD_IPV4_CKSUM == (1ULL << 1), "tx ipv4 cksum offload bit");
_Static_assert(RTE_ETH_TX_OFFLOAD_UDP_CKSUM == (1ULL << 2), "tx udp cksum offload bit");
_Static_assert(RTE_ETH_TX_OFFLOAD_TCP_CKSUM == (1ULL << 3), "tx tcp cksum offload bit");
_Static_assert(RTE_ETH_TX_OFFLOAD_TCP_TSO == (1ULL << 5), "tx tso offload bit");
_Static_assert(RTE_ETH_RSS_IPV4 == (1ULL << 2), "rss ipv4 bit");
_Static_assert(RTE_ETH_RSS_NONFRAG_IPV4_TCP == (1ULL << 4), "rss ipv4 tcp bit");
_Static_assert(RTE_ETH_RSS_NONFRAG_IPV4_UDP == (1ULL << 5), "rss ipv4 udp bit");
_Static_assert(RTE_MBUF_F_RX_IP_CKSUM_MASK == ((1ULL << 4) | (1ULL << 7)), "rx ip cksum mask");
_Static_assert(RTE_MBUF_F_RX_IP_CKSUM_GOOD == (1ULL << 7), "rx ip cksum good");
_Static_assert(RTE_MBUF_F_RX_IP_CKSUM_BAD == (1ULL << 4), "rx ip cksum bad");
_Static_assert(RTE_MBUF_F_RX_L4_CKSUM_MASK == ((1ULL << 3) | (1ULL << 8)), "rx l4 cksum mask");
_Static_assert(RTE_MBUF_F_RX_L4_CKSUM_GOOD == (1ULL << 8), "rx l4 cksum good");
_Static_assert(RTE_MBUF_F_RX_L4_CKSUM_BAD == (1ULL << 3), "rx l4 cksum bad");
_Static_assert(RTE_MBUF_F_TX_TCP_CKSUM == (1ULL << 52), "tx tcp cksum flag");
_Static_assert(RTE_MBUF_F_TX_UDP_CKSUM == (3ULL << 52), "tx udp cksum flag");
_Static_assert(RTE_MBUF_F_TX_IP_CKSUM == (1ULL << 54), "tx ip cksum flag");
_Static_assert(RTE_MBUF_F_TX_IPV4 == (1ULL << 55), "tx ipv4 flag");
_Static_assert(RTE_ETH_RETA_GROUP_SIZE == 64, "reta group size");
_Static_assert(RTE_ETH_MQ_RX_RSS == 1, "rss rx mq mode");

uint16_t lh_rx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n)
{
	return rte_eth_rx_burst(port, queue, pkts, n);
}

uint16_t lh_tx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n)
{
	return rte_eth_tx_burst(port, queue, pkts, n);
}

struct rte_mbuf *lh_pktmbuf_alloc(struct rte_mempool *pool)
{
	return rte_pktmbuf_alloc(pool);
}

void lh_pktmbuf_free(struct rte_mbuf *m)
{
	rte_pktmbuf_free(m);
}

void lh_mbuf_view(const struct rte_mbuf *m, struct lh_mbuf_view *out)
{
	out->data = rte_pktmbuf_mtod(m, uint8_t *);
	out->len = m->data_len;
	out->room = (uint16_t)(m->buf_len - m->data_off);
	out->nb_segs = m->nb_segs;
	out->ol_flags = m->ol_flags;
}

void lh_mbuf_set_len(struct rte_mbuf *m, uint16_t len)
{
	m->data_len = len;
	m->pkt_len = len;
}

void lh_mbuf_set_tx_offload(struct rte_mbuf *m, uint64_t ol_flags, uint16_t l2_len, uint16_t l3_len)
{
	m->ol_flags = (m->ol_flags & ~RTE_MBUF_F_TX_OFFLOAD_MASK) | ol_flags;
	m->l2_len = l2_len;
	m->l3_len = l3_len;
}

int lh_link_status(uint16_t port, uint32_t *speed_mbps)
{
	struct rte_eth_link link;
	int rc = rte_eth_link_get_nowait(port, &link);

	if (rc < 0)
		return rc;
	*speed_mbps = link.link_speed;
	return link.link_status == RTE_ETH_LINK_UP;
}

int lh_errno(void)
{
	return rte_errno;
}

unsigned lh_lcore_id(void)
{
	return rte_lcore_id();
}
