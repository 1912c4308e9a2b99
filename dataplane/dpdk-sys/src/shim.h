/* C shim for what DPDK provides only as static-inline functions or macros, and for port
 * and flow setup whose structs do not bind cleanly. Fast-path wrappers are one call per
 * burst. Everything here is called from Rust through dpdk-sys. */
#ifndef NATT_DPDK_SHIM_H
#define NATT_DPDK_SHIM_H

#include <stddef.h>
#include <stdint.h>
#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_ethdev.h>
#include <rte_lcore.h>
#include <rte_launch.h>
#include <rte_mbuf.h>
#include <rte_mempool.h>
#include <rte_ring.h>
#include <rte_cycles.h>
#include <rte_pdump.h>
#include <rte_telemetry.h>
#include <rte_version.h>

/* --- fast path: one call per burst --- */
uint16_t natt_rx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n);
uint16_t natt_tx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n);
unsigned int natt_ring_enqueue_burst(struct rte_ring *r, void *const *objs, unsigned int n);
unsigned int natt_ring_dequeue_burst(struct rte_ring *r, void **objs, unsigned int n);
int natt_pktmbuf_alloc_bulk(struct rte_mempool *mp, struct rte_mbuf **mbufs, unsigned int n);
/* Free whole chains. */
void natt_pktmbuf_free(struct rte_mbuf *m);
void natt_pktmbuf_free_burst(struct rte_mbuf **m, unsigned int n);
uint64_t natt_rdtsc(void);

/* --- small helpers --- */
unsigned int natt_lcore_id(void);
int natt_errno(void);
uint16_t natt_pktmbuf_data_room(struct rte_mempool *mp);

/* --- ports --- */
struct natt_port_info {
    char name[64];
    char driver[64];
    uint16_t max_rx_queues;
    uint16_t max_tx_queues;
    uint64_t rx_offload_capa;
    uint64_t tx_offload_capa;
    uint64_t flow_type_rss_offloads;
    uint32_t max_rx_pktlen;
    uint8_t mac[6];
    int32_t socket;
};
int natt_port_info(uint16_t port, struct natt_port_info *out);

/* Offload bits of rte_ethdev.h, which defines them with RTE_BIT64 (a macro bindgen
 * cannot evaluate). */
enum natt_offload_bits {
    NATT_RX_OFFLOAD_IPV4_CKSUM = RTE_ETH_RX_OFFLOAD_IPV4_CKSUM,
    NATT_TX_OFFLOAD_IPV4_CKSUM = RTE_ETH_TX_OFFLOAD_IPV4_CKSUM,
    NATT_TX_OFFLOAD_UDP_CKSUM = RTE_ETH_TX_OFFLOAD_UDP_CKSUM,
};

struct natt_port_conf {
    uint16_t nb_rxq;
    uint16_t nb_txq;
    uint16_t nb_rxd;
    uint16_t nb_txd;
    struct rte_mempool *pool;
    /* Spread received packets over the RX queues by RSS if the port can. */
    int rss;
    uint64_t rx_offloads;
    uint64_t tx_offloads;
    /* RSS hash key (used if the port takes a key of this length), or NULL. */
    const uint8_t *rss_key;
    uint8_t rss_key_len;
};
/* Configure, set up queues, start, enable promiscuous mode. On error returns a negative
 * errno and describes the failing step in err. */
int natt_port_start(uint16_t port, const struct natt_port_conf *c, char *err, size_t errlen);

/* Give the port this MAC address (a TAP takes the public port's, so the kernel sees
 * punted frames addressed to itself). */
int natt_port_set_mac(uint16_t port, const uint8_t mac[6]);
/* Stop and close (a net_pcap port flushes and closes its files). */
void natt_port_close(uint16_t port);
/* Size of the port's RSS redirection table (0 if it has none). */
uint16_t natt_port_reta_size(uint16_t port);

/* Steer ESP and ESP in UDP/4500 arriving on `port` by SPI: RSS on the SPI field over
 * queues [0, nb_queues) with the given hash key. Returns 0 if the port accepted the rules,
 * a negative errno (and the reason in err) if not. */
int natt_flow_esp_rss(uint16_t port, uint16_t nb_queues, const uint8_t *key, uint32_t key_len, char *err, size_t errlen);

/* Telemetry: the dataplane registers one callback that fills a dictionary from a JSON-free
 * list of (name, value) pairs it provides. */
typedef int (*natt_tel_fill)(const char *cmd, const char *params, void *ctx, struct rte_tel_data *d);
int natt_telemetry_register(const char *cmd, const char *help, natt_tel_fill fill, void *ctx);

#endif
