/* See shim.h. */
#include "shim.h"

#include <stdio.h>
#include <string.h>
#include <rte_flow.h>

uint16_t natt_rx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n)
{
    return rte_eth_rx_burst(port, queue, pkts, n);
}

uint16_t natt_tx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n)
{
    return rte_eth_tx_burst(port, queue, pkts, n);
}

unsigned int natt_ring_enqueue_burst(struct rte_ring *r, void *const *objs, unsigned int n)
{
    return rte_ring_enqueue_burst(r, objs, n, NULL);
}

unsigned int natt_ring_dequeue_burst(struct rte_ring *r, void **objs, unsigned int n)
{
    return rte_ring_dequeue_burst(r, objs, n, NULL);
}

int natt_pktmbuf_alloc_bulk(struct rte_mempool *mp, struct rte_mbuf **mbufs, unsigned int n)
{
    return rte_pktmbuf_alloc_bulk(mp, mbufs, n);
}

void natt_pktmbuf_free(struct rte_mbuf *m)
{
    rte_pktmbuf_free(m);
}

void natt_pktmbuf_free_burst(struct rte_mbuf **m, unsigned int n)
{
    rte_pktmbuf_free_bulk(m, n);
}

uint64_t natt_rdtsc(void)
{
    return rte_rdtsc();
}

unsigned int natt_lcore_id(void)
{
    return rte_lcore_id();
}

int natt_errno(void)
{
    return rte_errno;
}

uint16_t natt_pktmbuf_data_room(struct rte_mempool *mp)
{
    return rte_pktmbuf_data_room_size(mp);
}

int natt_port_info(uint16_t port, struct natt_port_info *out)
{
    struct rte_eth_dev_info info;
    struct rte_ether_addr mac;
    int rc;

    memset(out, 0, sizeof(*out));
    rc = rte_eth_dev_info_get(port, &info);
    if (rc != 0)
        return rc;
    rte_eth_dev_get_name_by_port(port, out->name);
    if (info.driver_name)
        snprintf(out->driver, sizeof(out->driver), "%s", info.driver_name);
    out->max_rx_queues = info.max_rx_queues;
    out->max_tx_queues = info.max_tx_queues;
    out->rx_offload_capa = info.rx_offload_capa;
    out->tx_offload_capa = info.tx_offload_capa;
    out->flow_type_rss_offloads = info.flow_type_rss_offloads;
    out->max_rx_pktlen = info.max_rx_pktlen;
    if (rte_eth_macaddr_get(port, &mac) == 0)
        memcpy(out->mac, mac.addr_bytes, 6);
    out->socket = rte_eth_dev_socket_id(port);
    return 0;
}

int natt_port_start(uint16_t port, const struct natt_port_conf *c, char *err, size_t errlen)
{
    struct rte_eth_conf conf;
    struct rte_eth_dev_info info;
    uint16_t nb_rxd = c->nb_rxd, nb_txd = c->nb_txd;
    int socket = rte_eth_dev_socket_id(port);
    int rc;
    uint16_t q;

    if (socket < 0)
        socket = (int)rte_socket_id();
    rc = rte_eth_dev_info_get(port, &info);
    if (rc != 0) {
        snprintf(err, errlen, "reading device info: %s", rte_strerror(-rc));
        return rc;
    }
    if (c->nb_rxq > info.max_rx_queues || c->nb_txq > info.max_tx_queues) {
        snprintf(err, errlen, "%u RX and %u TX queues asked, the port has at most %u and %u",
                 c->nb_rxq, c->nb_txq, info.max_rx_queues, info.max_tx_queues);
        return -EINVAL;
    }
    memset(&conf, 0, sizeof(conf));
    if (c->rss && c->nb_rxq > 1 && info.flow_type_rss_offloads != 0) {
        conf.rxmode.mq_mode = RTE_ETH_MQ_RX_RSS;
        conf.rx_adv_conf.rss_conf.rss_hf = info.flow_type_rss_offloads &
            (RTE_ETH_RSS_IP | RTE_ETH_RSS_UDP | RTE_ETH_RSS_ESP);
        if (c->rss_key != NULL && c->rss_key_len == info.hash_key_size) {
            conf.rx_adv_conf.rss_conf.rss_key = (uint8_t *)c->rss_key;
            conf.rx_adv_conf.rss_conf.rss_key_len = c->rss_key_len;
        }
    }
    conf.rxmode.offloads = c->rx_offloads & info.rx_offload_capa;
    conf.txmode.offloads = c->tx_offloads & info.tx_offload_capa;
    rc = rte_eth_dev_configure(port, c->nb_rxq, c->nb_txq, &conf);
    if (rc != 0) {
        snprintf(err, errlen, "configuring %u RX / %u TX queues: %s", c->nb_rxq, c->nb_txq, rte_strerror(-rc));
        return rc;
    }
    rc = rte_eth_dev_adjust_nb_rx_tx_desc(port, &nb_rxd, &nb_txd);
    if (rc != 0) {
        snprintf(err, errlen, "adjusting descriptors: %s", rte_strerror(-rc));
        return rc;
    }
    for (q = 0; q < c->nb_rxq; q++) {
        struct rte_eth_rxconf rxconf = info.default_rxconf;
        rxconf.offloads = conf.rxmode.offloads;
        rc = rte_eth_rx_queue_setup(port, q, nb_rxd, (unsigned int)socket, &rxconf, c->pool);
        if (rc != 0) {
            snprintf(err, errlen, "setting up RX queue %u with %u descriptors: %s", q, nb_rxd, rte_strerror(-rc));
            return rc;
        }
    }
    for (q = 0; q < c->nb_txq; q++) {
        struct rte_eth_txconf txconf = info.default_txconf;
        txconf.offloads = conf.txmode.offloads;
        rc = rte_eth_tx_queue_setup(port, q, nb_txd, (unsigned int)socket, &txconf);
        if (rc != 0) {
            snprintf(err, errlen, "setting up TX queue %u with %u descriptors: %s", q, nb_txd, rte_strerror(-rc));
            return rc;
        }
    }
    rc = rte_eth_dev_start(port);
    if (rc != 0) {
        snprintf(err, errlen, "starting: %s", rte_strerror(-rc));
        return rc;
    }
    /* Not every PMD has promiscuous mode (net_null, net_ring): not an error. */
    rte_eth_promiscuous_enable(port);
    return 0;
}

int natt_port_set_mac(uint16_t port, const uint8_t mac[6])
{
    struct rte_ether_addr a;
    memcpy(a.addr_bytes, mac, 6);
    return rte_eth_dev_default_mac_addr_set(port, &a);
}

void natt_port_close(uint16_t port)
{
    rte_eth_dev_stop(port);
    rte_eth_dev_close(port);
}

uint16_t natt_port_reta_size(uint16_t port)
{
    struct rte_eth_dev_info info;
    if (rte_eth_dev_info_get(port, &info) != 0)
        return 0;
    return info.reta_size;
}

int natt_flow_esp_rss(uint16_t port, uint16_t nb_queues, const uint8_t *key, uint32_t key_len, char *err, size_t errlen)
{
    uint16_t queues[RTE_MAX_QUEUES_PER_PORT];
    struct rte_flow_attr attr = { .ingress = 1 };
    struct rte_flow_item_udp udp_spec = { .hdr.dst_port = RTE_BE16(4500) };
    struct rte_flow_item_udp udp_mask = { .hdr.dst_port = RTE_BE16(0xffff) };
    struct rte_flow_action_rss rss = {
        .func = RTE_ETH_HASH_FUNCTION_TOEPLITZ,
        .level = 0,
        .types = RTE_ETH_RSS_ESP,
        .key_len = key_len,
        .key = key,
        .queue_num = nb_queues,
        .queue = queues,
    };
    struct rte_flow_action actions[] = {
        { .type = RTE_FLOW_ACTION_TYPE_RSS, .conf = &rss },
        { .type = RTE_FLOW_ACTION_TYPE_END },
    };
    /* ESP in UDP/4500, then plain ESP, over IPv4 and IPv6. */
    struct rte_flow_item natt4[] = {
        { .type = RTE_FLOW_ITEM_TYPE_ETH }, { .type = RTE_FLOW_ITEM_TYPE_IPV4 },
        { .type = RTE_FLOW_ITEM_TYPE_UDP, .spec = &udp_spec, .mask = &udp_mask },
        { .type = RTE_FLOW_ITEM_TYPE_ESP }, { .type = RTE_FLOW_ITEM_TYPE_END },
    };
    struct rte_flow_item natt6[] = {
        { .type = RTE_FLOW_ITEM_TYPE_ETH }, { .type = RTE_FLOW_ITEM_TYPE_IPV6 },
        { .type = RTE_FLOW_ITEM_TYPE_UDP, .spec = &udp_spec, .mask = &udp_mask },
        { .type = RTE_FLOW_ITEM_TYPE_ESP }, { .type = RTE_FLOW_ITEM_TYPE_END },
    };
    struct rte_flow_item esp4[] = {
        { .type = RTE_FLOW_ITEM_TYPE_ETH }, { .type = RTE_FLOW_ITEM_TYPE_IPV4 },
        { .type = RTE_FLOW_ITEM_TYPE_ESP }, { .type = RTE_FLOW_ITEM_TYPE_END },
    };
    struct rte_flow_item esp6[] = {
        { .type = RTE_FLOW_ITEM_TYPE_ETH }, { .type = RTE_FLOW_ITEM_TYPE_IPV6 },
        { .type = RTE_FLOW_ITEM_TYPE_ESP }, { .type = RTE_FLOW_ITEM_TYPE_END },
    };
    struct rte_flow_item *patterns[] = { natt4, natt6, esp4, esp6 };
    struct rte_flow_error ferr;
    unsigned int i;

    if (nb_queues == 0 || nb_queues > RTE_MAX_QUEUES_PER_PORT) {
        snprintf(err, errlen, "%u queues", nb_queues);
        return -EINVAL;
    }
    for (i = 0; i < nb_queues; i++)
        queues[i] = (uint16_t)i;
    for (i = 0; i < 4; i++) {
        memset(&ferr, 0, sizeof(ferr));
        if (rte_flow_validate(port, &attr, patterns[i], actions, &ferr) != 0) {
            snprintf(err, errlen, "%s", ferr.message ? ferr.message : "rte_flow_validate refused the rule");
            rte_flow_flush(port, &ferr);
            return -ENOTSUP;
        }
        if (rte_flow_create(port, &attr, patterns[i], actions, &ferr) == NULL) {
            snprintf(err, errlen, "%s", ferr.message ? ferr.message : "rte_flow_create failed");
            rte_flow_flush(port, &ferr);
            return -ENOTSUP;
        }
    }
    return 0;
}

struct natt_tel_ctx {
    natt_tel_fill fill;
    void *ctx;
};

#define NATT_TEL_MAX 16
static struct {
    char cmd[64];
    struct natt_tel_ctx c;
} natt_tel[NATT_TEL_MAX];
static int natt_tel_n;

static int natt_tel_cb(const char *cmd, const char *params, struct rte_tel_data *d)
{
    int i;
    for (i = 0; i < natt_tel_n; i++)
        if (strcmp(natt_tel[i].cmd, cmd) == 0)
            return natt_tel[i].c.fill(cmd, params, natt_tel[i].c.ctx, d);
    return -EINVAL;
}

int natt_telemetry_register(const char *cmd, const char *help, natt_tel_fill fill, void *ctx)
{
    if (natt_tel_n == NATT_TEL_MAX || strlen(cmd) >= sizeof(natt_tel[0].cmd))
        return -ENOSPC;
    snprintf(natt_tel[natt_tel_n].cmd, sizeof(natt_tel[0].cmd), "%s", cmd);
    natt_tel[natt_tel_n].c.fill = fill;
    natt_tel[natt_tel_n].c.ctx = ctx;
    natt_tel_n++;
    return rte_telemetry_register_cmd(cmd, natt_tel_cb, help);
}
