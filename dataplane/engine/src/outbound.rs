//! Encapsulation. A burst of frames from the protected side goes through stages over
//! the whole burst: parse the inner IP header, select the outbound SA by destination
//! (longest prefix) and check everything that can fail (selectors, TTL, room, MTU)
//! before taking a sequence number, lay out the ESP header and trailer, seal in place,
//! then write the outer UDP/IP/Ethernet headers in the headroom.

use crate::buf::{Frame, RxChecksum};
use crate::crypto::{AeadInputs, AeadKey, Backend};
use crate::engine::{Engine, MAX_BURST, account, expire};
use crate::event::{Event, EventKind, ExpiryCause, Host, SeqReservation};
use crate::icmp_error::IcmpError;
use crate::mss::MssClamp;
use crate::reason::{DropReason, PuntReason};
use crate::sa::{CRYPTO_AHEAD, DfPolicy, Endpoint, Mode, OUTER4_LEN, OutboundAhead, SaStore};
use crate::wire::esp::{self, ICV_LEN, PREFIX_LEN, TRAILER_LEN};
use crate::wire::ethernet::{self, ethertype};
use crate::wire::{WireError, checksum, ipv4, ipv6, proto, udp};
use core::net::{IpAddr, Ipv4Addr};

/// What became of an outbound frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutVerdict {
    /// The frame is now ESP (in UDP unless the SA has no encapsulation), for the
    /// public side.
    Encapsulated,
    /// Not IP: for the host stack, unchanged.
    Punt(PuntReason),
    /// Too big for the tunnel: the frame is now the ICMP error that tells the sender the
    /// largest packet that fits (`icmp_error`), to go back the way the packet came.
    IcmpTooBig,
    /// Its TTL or hop limit would reach zero here: the frame is now the ICMP Time
    /// Exceeded about it (`icmp_error`), to go back the way the packet came.
    IcmpTtlExceeded,
    Drop(DropReason),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutResult {
    pub verdict: OutVerdict,
    /// The outbound SA, once selected.
    pub spi: Option<u32>,
    /// Where the packet goes: the peer's current NAT endpoint.
    pub dest: Option<Endpoint>,
    /// The sequence number it carries.
    pub seq: u64,
    /// Checksums left for the NIC, and where the headers they cover are.
    pub tx_checksum: TxChecksum,
}

impl Default for OutResult {
    fn default() -> Self {
        OutResult {
            verdict: OutVerdict::Drop(DropReason::FrameTruncated),
            spi: None,
            dest: None,
            seq: 0,
            tx_checksum: TxChecksum::NONE,
        }
    }
}

/// The checksums of one encapsulated frame that the transmitting NIC is to compute
/// (only those `EngineConfig::tx_checksum` allows), with the header lengths DPDK needs
/// for them (`l2_len`, `l3_len`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TxChecksum {
    /// The outer IPv4 header checksum is zero, for the NIC.
    pub ipv4_header: bool,
    /// The UDP checksum holds the pseudo-header sum, for the NIC to finish.
    pub udp: bool,
    /// The outer header is IPv6.
    pub ipv6: bool,
    pub l2_len: u8,
    pub l3_len: u8,
}

impl TxChecksum {
    pub const NONE: TxChecksum = TxChecksum { ipv4_header: false, udp: false, ipv6: false, l2_len: 0, l3_len: 0 };

    /// Anything for the NIC to do.
    #[inline]
    pub fn any(&self) -> bool {
        self.ipv4_header || self.udp
    }
}

#[derive(Clone, Copy)]
pub(crate) struct Meta {
    live: bool,
    slot: u32,
    l3: usize,
    /// Inner IP datagram length and header length.
    ip_len: usize,
    hl: usize,
    v6: bool,
    tos: u8,
    /// Inner TTL or hop limit.
    ttl: u8,
    df: bool,
    /// Tunnel mode: the largest inner packet that fits the MTU, once `plan` found this
    /// one does not (else 0).
    fits: usize,
    /// Tunnel mode, a TCP packet: the MSS its SYN may announce at most (0: no clamping).
    mss: u16,
    /// Start and length of what ESP carries (the inner packet, or the transport payload).
    pstart: usize,
    plen: usize,
    pad: usize,
    next_header: u8,
    /// Offsets of the new Ethernet, IP and ESP headers; relative to the frame start,
    /// so they can be negative (into the headroom).
    l2_at: isize,
    ip_at: isize,
    esp_at: isize,
    outer_v6: bool,
    seq: u64,
    /// Inner addresses.
    src: IpAddr,
    dst: IpAddr,
    /// The nonce and AAD of the crypto, laid out in stage 3 (see `AeadInputs`).
    aead: AeadInputs,
}

pub(crate) const EMPTY: Meta = Meta {
    live: false,
    slot: u32::MAX,
    l3: 0,
    ip_len: 0,
    hl: 0,
    v6: false,
    tos: 0,
    ttl: 0,
    df: false,
    fits: 0,
    mss: 0,
    pstart: 0,
    plen: 0,
    pad: 0,
    next_header: 0,
    l2_at: 0,
    ip_at: 0,
    esp_at: 0,
    outer_v6: false,
    seq: 0,
    src: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    dst: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    aead: AeadInputs::EMPTY,
};

const NO_SLOT: u32 = u32::MAX;

/// Sequence numbers reserved at a time (see `Host::reserve_seq`).
pub const SEQ_BLOCK: u64 = 1 << 16;

impl<B: Backend, S: SaStore<B::Key>> Engine<B, S> {
    /// Encapsulate a burst in place. `results[i]` receives the verdict for `pkts[i]`.
    pub fn encap_burst<F, E>(&mut self, pkts: &mut [F], results: &mut [OutResult], events: &mut E)
    where
        F: Frame,
        E: Host,
    {
        let n = pkts.len().min(results.len());
        let mut start = 0;
        while start < n {
            let end = (start + MAX_BURST).min(n);
            self.encap_chunk(&mut pkts[start..end], &mut results[start..end], events);
            start = end;
        }
    }

    fn encap_chunk<F, E>(&mut self, pkts: &mut [F], results: &mut [OutResult], events: &mut E)
    where
        F: Frame,
        E: Host,
    {
        let mut scratch = self.out_meta.take().unwrap_or_else(|| Box::new([EMPTY; MAX_BURST]));
        let n = pkts.len().min(MAX_BURST);
        let meta = &mut scratch[..n];

        // Stage 1: parse the inner IP header.
        self.counters.out_packets += n as u64;
        for ((pkt, m), res) in pkts.iter().zip(meta.iter_mut()).zip(results.iter_mut()) {
            self.counters.out_bytes += pkt.len() as u64;
            *res = OutResult::default();
            m.live = false;
            m.slot = NO_SLOT;
            m.fits = 0;
            m.mss = 0;
            match self.classify(pkt.data(), pkt.ip_checksum(), m) {
                Ok(()) => m.live = true,
                Err(v) => self.settle_out(res, m, v),
            }
        }

        // Stage 2: select the SA by destination (the store may look ahead across the
        // burst first, so that the lookups' memory accesses overlap).
        if self.sas.looks_ahead() {
            let mut keys = [OutboundAhead { dst: IpAddr::V4(Ipv4Addr::UNSPECIFIED), len: 0 }; MAX_BURST];
            let mut k = 0;
            for m in meta.iter().filter(|m| m.live) {
                keys[k] = OutboundAhead { dst: m.dst, len: m.plen as u32 };
                k += 1;
            }
            self.sas.look_ahead_outbound(&keys[..k]);
        }
        // The last destination looked up in this burst and its SA: packets to one
        // client come in runs, and the store cannot change within a stage.
        let mut last = (IpAddr::V4(Ipv4Addr::UNSPECIFIED), NO_SLOT);
        for (m, res) in meta.iter_mut().zip(results.iter_mut()) {
            if m.live {
                if last.1 != NO_SLOT && m.dst == last.0 {
                    m.slot = last.1;
                    continue;
                }
                match self.sas.outbound(&m.dst) {
                    Ok(slot) => {
                        m.slot = slot;
                        last = (m.dst, slot);
                    }
                    Err(r) => {
                        self.settle_out(res, m, OutVerdict::Drop(r));
                    }
                }
            }
        }

        // Stage 3: every check that can fail (selectors first), then the sequence number.
        for ((pkt, m), res) in pkts.iter_mut().zip(meta.iter_mut()).zip(results.iter_mut()) {
            if m.live {
                let (head, room) = (pkt.headroom(), pkt.tailroom() + pkt.len());
                match self.plan(head, room, m, res, events) {
                    Ok(()) if m.mss != 0 => self.clamp_mss(pkt, m),
                    Ok(()) => {}
                    Err(r) => {
                        let v = match r {
                            DropReason::MtuExceeded if m.fits > 0 => self.icmp_error(pkt, m, IcmpError::TooBig(m.fits)),
                            DropReason::TtlExceeded => self.icmp_error(pkt, m, IcmpError::TtlExceeded),
                            _ => OutVerdict::Drop(r),
                        };
                        self.settle_out(res, m, v);
                    }
                }
            }
        }

        if !self.sas.looks_ahead() {
            // Stages 4 and 5 packet by packet: with no look-ahead every SA's state is in
            // the caches, and a packet's first lines still are right after its crypto.
            for ((pkt, m), res) in pkts.iter_mut().zip(meta.iter_mut()).zip(results.iter_mut()) {
                if m.live {
                    self.seal_and_write(pkt, m, res);
                }
            }
            self.out_meta = Some(scratch);
            return;
        }

        // Stage 4: ESP header, trailer, inner TTL; seal in place, the store loading each
        // packet's key a few packets before.
        for i in 0..n {
            if let Some(next) = meta.get(i + CRYPTO_AHEAD) {
                self.prepare_seal(next);
            }
            let (pkt, m, res) = (&mut pkts[i], &mut meta[i], &mut results[i]);
            if m.live {
                if let Err(r) = self.seal(pkt, m) {
                    // Not reached: `plan` made room. Never send what was not sealed.
                    self.settle_out(res, m, OutVerdict::Drop(r));
                }
            }
        }

        // Stage 5: outer headers.
        for ((pkt, m), res) in pkts.iter_mut().zip(meta.iter_mut()).zip(results.iter_mut()) {
            if m.live {
                self.finish_out(pkt, m, res);
            }
        }
        self.out_meta = Some(scratch);
    }

    /// Stages 4 and 5 for one packet.
    #[inline(always)]
    fn seal_and_write<F: Frame>(&mut self, pkt: &mut F, m: &mut Meta, res: &mut OutResult) {
        match self.seal(pkt, m) {
            Ok(()) => self.finish_out(pkt, m, res),
            Err(r) => self.settle_out(res, m, OutVerdict::Drop(r)),
        }
    }

    /// Stage 5 for one packet, and its verdict.
    #[inline(always)]
    fn finish_out<F: Frame>(&mut self, pkt: &mut F, m: &mut Meta, res: &mut OutResult) {
        match self.write_outer(pkt, m) {
            Ok(tx) => {
                res.tx_checksum = tx;
                self.settle_out(res, m, OutVerdict::Encapsulated);
            }
            Err(r) => {
                // Not reached: `plan` made room. Never send a frame left half built.
                self.settle_out(res, m, OutVerdict::Drop(r));
            }
        }
    }

    /// Record a final verdict and count it; the later stages skip the packet.
    fn settle_out(&mut self, res: &mut OutResult, m: &mut Meta, v: OutVerdict) {
        m.live = false;
        res.verdict = v;
        match v {
            OutVerdict::Drop(r) => {
                self.counters.drop(r);
                if m.slot != NO_SLOT {
                    if let Some(e) = self.sas.entry_mut(m.slot) {
                        e.rt.count_drop(r);
                    }
                }
            }
            OutVerdict::Punt(p) => self.counters.punts[p as usize] += 1,
            OutVerdict::IcmpTooBig => self.counters.icmp_too_big += 1,
            OutVerdict::IcmpTtlExceeded => self.counters.icmp_ttl_exceeded += 1,
            OutVerdict::Encapsulated => {}
        }
    }

    /// Lower the MSS of a TCP SYN about to enter the tunnel (see `mss`): a look at the
    /// flags of every TCP packet, the rest for SYNs.
    #[inline]
    fn clamp_mss<F: Frame>(&mut self, pkt: &mut F, m: &Meta) {
        if pkt.data().get(m.l3..).is_some_and(|ip| crate::mss::is_syn(ip, m.hl)) {
            self.clamp_syn(pkt, m);
        }
    }

    #[cold]
    fn clamp_syn<F: Frame>(&mut self, pkt: &mut F, m: &Meta) {
        let (h, l3) = (pkt.head(), m.l3);
        if let Some(ip) = pkt.raw_mut().get_mut(h + l3..h + l3 + m.ip_len) {
            if crate::mss::clamp(ip, m.v6, m.hl, m.mss) {
                self.counters.mss_clamped += 1;
            }
        }
    }

    /// A tunnel-mode packet that cannot be forwarded: the ICMP error about it where one
    /// may be sent (see `icmp_error`), else dropped.
    #[cold]
    fn icmp_error<F: Frame>(&mut self, pkt: &mut F, m: &Meta, what: IcmpError) -> OutVerdict {
        let (refused, sent) = match what {
            IcmpError::TooBig(_) => (OutVerdict::Drop(DropReason::MtuExceeded), OutVerdict::IcmpTooBig),
            IcmpError::TtlExceeded => (OutVerdict::Drop(DropReason::TtlExceeded), OutVerdict::IcmpTtlExceeded),
        };
        if matches!(what, IcmpError::TooBig(_)) && !m.v6 && !m.df {
            return refused;
        }
        let local = self.sas.entry(m.slot).map(|e| e.rt.local);
        let Some(from) = local.and_then(|l| self.cfg.icmp.source(m.v6, l)) else { return refused };
        let ip = pkt.data().get(m.l3..m.l3 + m.ip_len).unwrap_or_default();
        let Some(to) = crate::icmp_error::may_answer(ip, m.v6, m.hl) else { return refused };
        if !crate::icmp_error::has_room(pkt.head() + m.l3, m.v6) || !self.icmp_bucket.take(self.now) {
            return refused;
        }
        let ident = self.next_ident();
        if crate::icmp_error::write(pkt, m.l3, m.ip_len, from, to, what, ident) { sent } else { refused }
    }

    // ---- stage 1 ----

    fn classify(&self, d: &[u8], nic: RxChecksum, m: &mut Meta) -> Result<(), OutVerdict> {
        use OutVerdict::{Drop, Punt};
        // The common case first, in one pass: untagged IPv4 with a 20-byte header.
        if let Some(r) = ipv4::basic_in_frame(d, nic) {
            note_v4(m, ethernet::HEADER_LEN, &r);
            return Ok(());
        }
        let l2 = ethernet::Frame::new_checked(d).and_then(|f| f.info()).map_err(|e| {
            Drop(if e == WireError::Malformed { DropReason::StackedVlan } else { DropReason::FrameTruncated })
        })?;
        m.l3 = usize::from(l2.l3_offset);
        let ip = &d[m.l3..];
        let (src, dst) = match l2.ethertype {
            ethertype::IPV4 => {
                let r = ipv4::check(ip, nic).map_err(|e| Drop(e.into()))?;
                note_v4(m, m.l3, &r);
                return Ok(());
            }
            ethertype::IPV6 => {
                let p = ipv6::Packet::new_checked(ip).map_err(|_| Drop(DropReason::IpHeaderInvalid))?;
                m.v6 = true;
                m.ip_len = p.total_len();
                m.hl = ipv6::HEADER_LEN;
                m.tos = p.traffic_class();
                m.ttl = p.hop_limit();
                m.df = true;
                m.next_header = p.next_header();
                (IpAddr::V6(p.src()), IpAddr::V6(p.dst()))
            }
            _ => return Err(Punt(PuntReason::Host)),
        };
        m.src = src;
        m.dst = dst;
        Ok(())
    }

    // ---- stage 3 ----

    /// Check the source against the SA's selectors, lay out the packet for the SA and
    /// take a sequence number. `head` is the headroom, `room` the frame length plus
    /// tailroom.
    fn plan<E: Host>(
        &mut self,
        head: usize,
        room: usize,
        m: &mut Meta,
        res: &mut OutResult,
        events: &mut E,
    ) -> Result<(), DropReason> {
        let mtu = self.cfg.mtu;
        let e = self.sas.entry_mut(m.slot).ok_or(DropReason::NoOutboundSa)?;
        let sa = &mut e.rt;
        res.spi = Some(sa.spi);
        let tunnel = sa.mode == Mode::Tunnel;
        if tunnel && !sa.local_has(&m.src) {
            return Err(DropReason::SelectorMismatch);
        }
        if sa.expired {
            return Err(DropReason::SaExpired);
        }
        let tcp = tunnel && m.next_header == proto::TCP && self.cfg.mss_clamp != MssClamp::Off;
        if tunnel {
            // Tunnel mode forwards: the inner TTL must survive its decrement.
            if m.ttl <= 1 {
                return Err(DropReason::TtlExceeded);
            }
            m.pstart = m.l3;
            m.plen = m.ip_len;
            m.next_header = if m.v6 { proto::IPV6 } else { proto::IPV4 };
            m.outer_v6 = sa.local_v6;
        } else {
            if m.v6 && matches!(m.next_header, proto::HOPOPT | proto::IPV6_ROUTE | proto::IPV6_FRAG | proto::IPV6_OPTS)
            {
                return Err(DropReason::TransportExtHeaders);
            }
            m.pstart = m.l3 + m.hl;
            m.plen = m.ip_len - m.hl;
            m.outer_v6 = m.v6;
        }
        m.pad = esp::pad_len_masked(m.plen, usize::from(sa.pad_mask));
        let udp_len = if sa.encap.is_some() { udp::HEADER_LEN } else { 0 };
        let outer_hl = if tunnel { if m.outer_v6 { ipv6::HEADER_LEN } else { ipv4::HEADER_LEN } } else { m.hl };
        m.esp_at = m.pstart as isize - PREFIX_LEN as isize;
        m.ip_at = m.esp_at - (udp_len + outer_hl) as isize;
        m.l2_at = m.ip_at - ethernet::HEADER_LEN as isize;
        if (head as isize) + m.l2_at < 0 {
            return Err(DropReason::NoHeadroom);
        }
        let end = m.pstart + m.plen + m.pad + TRAILER_LEN + ICV_LEN;
        if end > room {
            return Err(DropReason::NoTailroom);
        }
        let too_big = (end as isize - m.ip_at) as usize > mtu;
        if too_big || tcp {
            let overhead = (m.pstart as isize - m.ip_at) as usize;
            let fits = crate::icmp_error::largest_inner(mtu, overhead, usize::from(sa.pad_mask) + 1, ICV_LEN);
            if too_big {
                m.fits = if tunnel { fits } else { 0 };
                return Err(DropReason::MtuExceeded);
            }
            m.mss = self.cfg.mss_clamp.limit(fits, m.v6).unwrap_or(0);
        }
        if sa.seq >= sa.seq_max() {
            // Never wrap: the next number would repeat an IV under this key.
            events.event(Event { spi: sa.spi, direction: sa.direction, kind: EventKind::SeqExhausted });
            expire(sa, ExpiryCause::SeqExhausted, events);
            return Err(DropReason::SeqExhausted);
        }
        let seq = sa.seq + 1;
        if seq > sa.seq_reserved {
            // Reserve the next block before using any number in it.
            let up_to = sa.seq.saturating_add(SEQ_BLOCK).min(sa.seq_max());
            if !events.reserve_seq(SeqReservation { spi: sa.spi, key_fp: sa.key_fp, up_to }) {
                return Err(DropReason::SeqUnreserved);
            }
            sa.seq_reserved = up_to;
        }
        sa.seq = seq;
        m.seq = sa.seq;
        m.aead = AeadInputs::new(&sa.salt, &seq.to_be_bytes(), sa.spi, seq, sa.esn);
        res.seq = sa.seq;
        res.dest = Some(sa.destination());
        let bytes = m.plen as u64;
        account(sa, bytes, events);
        self.counters.encap_packets += 1;
        self.counters.encap_bytes += bytes;
        Ok(())
    }

    // ---- stage 4 ----

    /// Have the store load what sealing `m` will read of its key.
    #[inline]
    fn prepare_seal(&self, m: &Meta) {
        if m.live {
            self.sas.prepare_crypto(m.slot, m.plen + m.pad + TRAILER_LEN);
        }
    }

    fn seal<F>(&self, pkt: &mut F, m: &Meta) -> Result<(), DropReason>
    where
        F: Frame,
    {
        let e = self.sas.entry(m.slot).ok_or(DropReason::NoOutboundSa)?;
        let sa = &e.rt;
        let h = pkt.head();
        let raw = pkt.raw_mut();
        let at = |off: isize| (h as isize + off) as usize;
        // Keep the MAC addresses before anything overwrites them.
        let mut macs = [0u8; 12];
        macs.copy_from_slice(&raw[h..h + 12]);
        let l2 = at(m.l2_at);
        raw[l2..l2 + 12].copy_from_slice(&macs);
        match sa.mode {
            Mode::Tunnel => {
                let inner = &mut raw[h + m.l3..h + m.l3 + m.ip_len];
                if m.v6 {
                    let mut p = ipv6::Packet::new_unchecked(inner);
                    let hop = p.hop_limit();
                    p.set_hop_limit(hop - 1);
                } else {
                    ipv4::Packet::new_unchecked(inner).decrement_ttl();
                }
            }
            Mode::Transport => {
                // The packet's own IP header moves to the front; ESP goes after it.
                raw.copy_within(h + m.l3..h + m.l3 + m.hl, at(m.ip_at));
            }
        }
        let pend = h + m.pstart + m.plen;
        esp::write_trailer(&mut raw[pend..pend + m.pad + TRAILER_LEN], m.pad, m.next_header);
        let cend = pend + m.pad + TRAILER_LEN;
        let esp_at = at(m.esp_at);
        let iv = m.seq.to_be_bytes();
        let seq_lo = (m.seq as u32).to_be_bytes();
        let seq_hi = ((m.seq >> 32) as u32).to_be_bytes();
        let spi = sa.spi.to_be_bytes();
        let n = &m.aead.nonce;
        // The ESP header and IV: SPI, sequence number (low half), the full number as IV.
        let hdr =
            raw.get_mut(esp_at..).and_then(|r| r.first_chunk_mut::<PREFIX_LEN>()).ok_or(DropReason::NoHeadroom)?;
        hdr[..4].copy_from_slice(&spi);
        hdr[4..8].copy_from_slice(&seq_lo);
        hdr[8..].copy_from_slice(&iv);
        let icv = if !sa.gmac {
            sa.key.seal(n, m.aead.aad(), &mut raw[esp_at + PREFIX_LEN..cend])
        } else if sa.esn {
            // SPI || seq_hi || seq_lo || IV || payload as one AAD, laid out in place over
            // the 4 bytes before ESP (the outer headers are written afterwards).
            raw[esp_at - 4..esp_at].copy_from_slice(&spi);
            raw[esp_at..esp_at + 4].copy_from_slice(&seq_hi);
            let icv = sa.key.seal(n, &raw[esp_at - 4..cend], &mut []);
            raw[esp_at..esp_at + 4].copy_from_slice(&spi);
            icv
        } else {
            sa.key.seal(n, &raw[esp_at..cend], &mut [])
        };
        *raw.get_mut(cend..).and_then(|r| r.first_chunk_mut::<ICV_LEN>()).ok_or(DropReason::NoTailroom)? = icv;
        Ok(())
    }

    // ---- stage 5 ----

    /// Returns the checksums left for the NIC.
    fn write_outer<F>(&mut self, pkt: &mut F, m: &Meta) -> Result<TxChecksum, DropReason>
    where
        F: Frame,
    {
        let ident = self.next_ident();
        let offload = self.cfg.tx_checksum;
        let e = self.sas.entry(m.slot).ok_or(DropReason::NoOutboundSa)?;
        let sa = &e.rt;
        let h = pkt.head();
        let l2 = (h as isize + m.l2_at) as usize;
        let end = h + m.pstart + m.plen + m.pad + TRAILER_LEN + ICV_LEN;
        // The new frame, one bounds check; below, offsets are from its start: Ethernet,
        // then the outer IP header at 14, UDP (if any) right before ESP.
        let f = pkt.raw_mut().get_mut(l2..end).ok_or(DropReason::NoHeadroom)?;
        let ip = ethernet::HEADER_LEN;
        let esp_at = (m.esp_at - m.l2_at) as usize;
        let l3_end = if sa.encap.is_some() { esp_at - udp::HEADER_LEN } else { esp_at };
        let len = f.len();
        if sa.templated() {
            // Tunnel mode over IPv4: the SA's template (IPv4 with its checksum field zero,
            // then UDP if the SA encapsulates), with what differs per packet filled in and
            // added to the template's sum.
            let df = if sa.df == DfPolicy::Copy && m.df { ipv4::FLAG_DF } else { 0 };
            let (total, udp_len) = ((len - ip) as u16, (len - l3_end) as u16);
            let outer = f.get_mut(ip..).and_then(|t| match sa.encap {
                Some(_) => t.first_chunk_mut::<OUTER4_LEN>().and_then(|h| {
                    *h = sa.outer4;
                    h[24..26].copy_from_slice(&udp_len.to_be_bytes());
                    h.first_chunk_mut::<{ ipv4::HEADER_LEN }>()
                }),
                None => t.first_chunk_mut::<{ ipv4::HEADER_LEN }>().map(|h| {
                    if let Some(t) = sa.outer4.first_chunk() {
                        *h = *t;
                    }
                    h
                }),
            });
            if let Some(h) = outer {
                let w0 = 0x4500_0000 | (u32::from(m.tos) << 16) | u32::from(total);
                let w1 = (u32::from(ident) << 16) | u32::from(df) | (u32::from(h[6]) << 8);
                h[0..4].copy_from_slice(&w0.to_be_bytes());
                h[4..8].copy_from_slice(&w1.to_be_bytes());
                if !offload.ipv4_header {
                    // Under 2^18: two end-around carries fold it.
                    let sum = sa.outer4_sum + u32::from(m.tos) + u32::from(total) + u32::from(ident) + u32::from(df);
                    let sum = (sum & 0xffff) + (sum >> 16);
                    let sum = (sum & 0xffff) + (sum >> 16);
                    h[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
                }
                // Else DPDK: the NIC fills a header checksum field left zero.
            }
            if let Some(eth) = f.first_chunk_mut::<{ ethernet::HEADER_LEN }>() {
                eth[12..].copy_from_slice(&ethertype::IPV4.to_be_bytes());
            }
            pkt.set_range(l2, end - l2);
            return Ok(TxChecksum {
                ipv4_header: offload.ipv4_header,
                l2_len: ethernet::HEADER_LEN as u8,
                l3_len: ipv4::HEADER_LEN as u8,
                ..TxChecksum::NONE
            });
        }
        let ip_proto = if sa.encap.is_some() { proto::UDP } else { proto::ESP };
        let peer = sa.peer.endpoint.addr;
        if let Some(enc) = sa.encap {
            if let Some(u) = f[l3_end..].first_chunk_mut::<{ udp::HEADER_LEN }>() {
                udp::emit_header(u, enc.local_port, sa.peer.endpoint.port, (len - l3_end) as u16);
            }
        }
        match (sa.mode, sa.local, peer) {
            (Mode::Tunnel, IpAddr::V4(src), IpAddr::V4(dst)) => {
                ipv4::Packet::new_unchecked(&mut f[ip..]).emit_basic(&ipv4::Repr {
                    src,
                    dst,
                    protocol: ip_proto,
                    tos: m.tos,
                    ttl: sa.ttl,
                    ident,
                    dont_frag: match sa.df {
                        DfPolicy::Copy => m.df,
                        DfPolicy::Set => true,
                        DfPolicy::Clear => false,
                    },
                    total_len: (len - ip) as u16,
                });
            }
            (Mode::Tunnel, IpAddr::V6(src), IpAddr::V6(dst)) => {
                ipv6::Packet::new_unchecked(&mut f[ip..]).emit(&ipv6::Repr {
                    src,
                    dst,
                    next_header: ip_proto,
                    traffic_class: m.tos,
                    // RFC 6438: a flow label per SA lets ECMP spread tunnels.
                    flow_label: sa.spi.wrapping_mul(0x9e37_79b1) >> 12,
                    hop_limit: sa.ttl,
                    payload_len: (len - ip - ipv6::HEADER_LEN) as u16,
                });
            }
            (Mode::Transport, IpAddr::V4(src), IpAddr::V4(dst)) => {
                let mut p = ipv4::Packet::new_unchecked(&mut f[ip..]);
                p.set_src(src);
                p.set_dst(dst);
                p.set_protocol(ip_proto);
                p.set_total_len((len - ip) as u16);
                p.fill_checksum();
            }
            (Mode::Transport, IpAddr::V6(src), IpAddr::V6(dst)) => {
                let mut p = ipv6::Packet::new_unchecked(&mut f[ip..]);
                p.set_src(&src);
                p.set_dst(&dst);
                p.set_next_header(ip_proto);
                p.set_payload_len((len - ip - ipv6::HEADER_LEN) as u16);
            }
            // Configuration validation keeps local and peer in one family.
            _ => {}
        }
        let mut tx = TxChecksum {
            ipv6: m.outer_v6,
            l2_len: ethernet::HEADER_LEN as u8,
            l3_len: (l3_end - ip) as u8,
            ..TxChecksum::NONE
        };
        if !m.outer_v6 && offload.ipv4_header {
            // DPDK: the NIC fills a header checksum field left zero.
            ipv4::Packet::new_unchecked(&mut f[ip..]).set_checksum(0);
            tx.ipv4_header = true;
        }
        if sa.encap.is_some() {
            if let (IpAddr::V6(s), IpAddr::V6(d)) = (sa.local, peer) {
                // IPv6 forbids a zero UDP checksum (RFC 8200 §8.1).
                let seg = &mut f[l3_end..];
                let pseudo = checksum::pseudo_v6(&s, &d, proto::UDP, seg.len() as u32);
                let c = if offload.udp {
                    // DPDK: the NIC finishes from the pseudo-header sum (not inverted).
                    tx.udp = true;
                    checksum::fold(pseudo)
                } else {
                    match checksum::l4_checksum(pseudo, seg) {
                        0 => 0xffff,
                        c => c,
                    }
                };
                udp::Packet::new_unchecked(seg).set_checksum(c);
            }
        }
        let et = if m.outer_v6 { ethertype::IPV6 } else { ethertype::IPV4 };
        if let Some(eth) = f.first_chunk_mut::<{ ethernet::HEADER_LEN }>() {
            eth[12..].copy_from_slice(&et.to_be_bytes());
        }
        pkt.set_range(l2, end - l2);
        Ok(tx)
    }
}

/// Keep what the later stages need of an inner IPv4 header at `l3`.
#[inline(always)]
fn note_v4(m: &mut Meta, l3: usize, r: &ipv4::HeaderRepr) {
    m.l3 = l3;
    m.v6 = false;
    m.ip_len = r.total_len;
    m.hl = r.header_len;
    m.tos = r.tos;
    m.ttl = r.ttl;
    m.df = r.dont_frag;
    m.next_header = r.protocol;
    m.src = IpAddr::V4(r.src);
    m.dst = IpAddr::V4(r.dst);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buf::PktBuf;
    use crate::engine::{EngineConfig, TxChecksumOffload};
    use crate::event::Discard;
    use crate::sa::config::parse_sa;
    use crate::{Engine, crypto::Ring};

    /// An engine with one tunnel-mode outbound SA over IPv4, in UDP or plain ESP, with
    /// its header template, or with the template cleared (so the general code writes the
    /// headers).
    fn engine(df: &str, offload: bool, template: bool, udp: bool) -> Engine {
        let mut sa = serde_json::json!({
            "name": "out", "spi": 0x2001, "direction": "outbound", "mode": "tunnel", "algorithm": "aes128-gcm",
            "key": "00112233445566778899aabbccddeeff", "salt": "01020304",
            "local": "203.0.113.1", "peer": "198.51.100.7", "encap": {"local_port": 4500, "peer_port": 31000},
            "ttl": 61, "df": df,
            "selectors": {"local": ["10.0.0.0/16"], "peer": ["10.8.0.2/32"]},
        });
        if !udp {
            sa["encap"] = serde_json::Value::Null;
        }
        let cfg = EngineConfig {
            tx_checksum: TxChecksumOffload { ipv4_header: offload, udp: false },
            ..EngineConfig::default()
        };
        let mut e = Engine::<Ring>::with_sas(cfg, [parse_sa(&sa).expect("valid SA")]).expect("installs");
        let slot = e.store().outbound_slot(0x2001).expect("installed");
        let rt = &mut e.store_mut().get_mut(slot).expect("installed").rt;
        assert_eq!(rt.outer4[0], 0x45, "an IPv4 tunnel has a template");
        if !template {
            rt.outer4 = [0; OUTER4_LEN];
        }
        e
    }

    /// An inner IPv4/UDP packet from 10.0.1.9 to 10.8.0.2 behind an Ethernet header.
    fn inner(tos: u8, df: bool, len: usize) -> Vec<u8> {
        let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x00];
        let mut ip =
            [0x45, tos, 0, 0, 0x12, 0x34, if df { 0x40 } else { 0 }, 0, 64, 17, 0, 0, 10, 0, 1, 9, 10, 8, 0, 2];
        ip[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        let c = checksum::checksum(&ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        f.extend_from_slice(&ip);
        f.extend((0..len - 20).map(|i| i as u8));
        f
    }

    fn encap(e: &mut Engine, frame: &[u8]) -> (Vec<u8>, OutResult) {
        let mut pkts = [PktBuf::from_frame(frame, 128, 64)];
        let mut res = [OutResult::default()];
        e.encap_burst(&mut pkts, &mut res, &mut Discard);
        (pkts[0].data().to_vec(), res[0])
    }

    #[test]
    fn the_header_template_writes_what_the_general_code_writes() {
        let mut seen = 0;
        for (df, offload, udp) in every_kind() {
            let (mut fast, mut slow) = (engine(df, offload, true, udp), engine(df, offload, false, udp));
            for (tos, inner_df, len) in [(0, true, 64), (0xb8, false, 64), (3, true, 1400), (0x2e, false, 333)] {
                let f = inner(tos, inner_df, len);
                let (a, ra) = encap(&mut fast, &f);
                let (b, rb) = encap(&mut slow, &f);
                assert_eq!(ra.verdict, OutVerdict::Encapsulated);
                assert_eq!(
                    (hex(&a), ra),
                    (hex(&b), rb),
                    "df {df}, offload {offload}, udp {udp}, tos {tos}, inner DF {inner_df}"
                );
                let ip = &a[14..34];
                assert_eq!(ip[6] & 0x40 != 0, df == "set" || (df == "copy" && inner_df), "DF");
                assert_eq!((ip[1], ip[8], ip[9]), (tos, 61, if udp { 17 } else { 50 }));
                assert_eq!(checksum::checksum(ip) == 0, !offload, "the checksum, or zero for the NIC");
                let esp_at = if udp {
                    assert_eq!(&a[34..38], &[0x11, 0x94, 0x79, 0x18], "ports 4500 to 31000");
                    42
                } else {
                    34
                };
                assert_eq!(&a[esp_at..esp_at + 4], &0x2001u32.to_be_bytes(), "the SPI right after");
                seen += 1;
            }
            // The peer's NAT mapping moves: both send to the new endpoint.
            let to = Endpoint { addr: "192.0.2.77".parse().unwrap(), port: 40000 };
            for (e, template) in [(&mut fast, true), (&mut slow, false)] {
                let slot = e.store().outbound_slot(0x2001).unwrap();
                let rt = &mut e.store_mut().get_mut(slot).unwrap().rt;
                assert!(rt.follow_nat(to));
                if !template {
                    rt.outer4 = [0; OUTER4_LEN];
                }
            }
            let f = inner(0, true, 100);
            let ((a, ra), (b, rb)) = (encap(&mut fast, &f), encap(&mut slow, &f));
            assert_eq!((hex(&a), ra), (hex(&b), rb), "after the NAT moved");
            assert_eq!(&a[30..34], &[192u8, 0, 2, 77]);
            if udp {
                assert_eq!(&a[36..38], &40000u16.to_be_bytes());
            }
        }
        assert_eq!(seen, 48);
    }

    /// Every DF policy, with and without checksum offload, in UDP and plain ESP.
    fn every_kind() -> impl Iterator<Item = (&'static str, bool, bool)> {
        ["copy", "set", "clear"]
            .into_iter()
            .flat_map(|df| [false, true].into_iter().flat_map(move |o| [true, false].map(move |u| (df, o, u))))
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }
}
