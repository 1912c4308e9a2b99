//! Decapsulation. A burst of frames from the public side goes through four stages, each
//! over the whole burst: parse and classify (reassembling fragments), look up the SA and
//! check the packet before any crypto (destination, encapsulation, lengths,
//! anti-replay), open in place, then finish (window update, trailer, inner-packet
//! checks, NAT mapping, lifetimes) and rewrite the frame around the inner packet.

use crate::buf::{Frame, RxChecksum};
use crate::crypto::{AeadInputs, AeadKey, Backend, Icv};
use crate::engine::{Engine, EngineConfig, MAX_BURST, account};
use crate::event::{Event, EventKind, Host};
use crate::reason::{DropReason, PuntReason};
use crate::reassembly::{FragOutcome, Fragment};
use crate::replay::ReplayError;
use crate::sa::{CRYPTO_AHEAD, Direction, Endpoint, InboundAhead, Mode, SaRuntime, SaStore};
use crate::wire::esp::{self, ICV_LEN, NattKind, PREFIX_LEN};
use crate::wire::ethernet::{self, ethertype};
use crate::wire::{WireError, be16, be32, checksum, ipv4, ipv6, proto, udp};
use core::net::{IpAddr, Ipv4Addr};

/// What became of an inbound frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InVerdict {
    /// Decapsulated (tunnel mode): the frame is now the inner packet behind an Ethernet
    /// header, for the protected network.
    Tunnel,
    /// Decapsulated (transport mode): the frame is the rebuilt packet, for this host.
    Transport,
    /// A NAT-T keepalive, consumed.
    Keepalive,
    /// For the host stack, unchanged.
    Punt(PuntReason),
    /// A fragment kept for reassembly; the buffer may be reused.
    Held,
    Drop(DropReason),
}

/// What `Engine::reassemble` did with a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reassembly {
    /// Not a fragment: process it as it is.
    NotFragment,
    /// A fragment, kept; the buffer may be reused.
    Held,
    /// The last fragment: the buffer now holds the whole datagram.
    Complete,
    /// A fragment of another protocol, for the host stack.
    Punt(PuntReason),
    Drop(DropReason),
}

/// The verdict for one frame and what was learned about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InResult {
    pub verdict: InVerdict,
    /// The SPI, once read.
    pub spi: Option<u32>,
    /// The outer source address and UDP port (0 for plain ESP).
    pub source: Option<Endpoint>,
}

impl Default for InResult {
    fn default() -> Self {
        InResult { verdict: InVerdict::Drop(DropReason::FrameTruncated), spi: None, source: None }
    }
}

/// What the stages pass on about one packet. Offsets are from the frame's start.
#[derive(Clone, Copy)]
#[cfg_attr(test, derive(Debug, PartialEq))]
pub(crate) struct Meta {
    live: bool,
    l3: usize,
    esp: usize,
    end: usize,
    v6: bool,
    encap: bool,
    tos: u8,
    ttl: u8,
    ident: u16,
    df: bool,
    /// The outer source is known (`src`, and `sport` for UDP, else 0): reported in
    /// `InResult::source`. Written out in stage 2, not in `parse`: reading `src` back right
    /// after `parse_v4` stored it in pieces stalls store forwarding.
    has_src: bool,
    flow: u32,
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
    spi: u32,
    /// The sequence number: its low half as read (stage 1), then the full number with
    /// the high half inferred (stage 2).
    seq: u64,
    slot: u32,
    /// The IV (stage 1), then the nonce and AAD of the crypto laid out from it in stage
    /// 2 (see `AeadInputs`).
    iv: [u8; 8],
    aead: AeadInputs,
}

pub(crate) const EMPTY: Meta = Meta {
    live: false,
    l3: 0,
    esp: 0,
    end: 0,
    v6: false,
    encap: false,
    tos: 0,
    ttl: 0,
    ident: 0,
    df: false,
    has_src: false,
    flow: 0,
    src: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    dst: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    sport: 0,
    dport: 0,
    spi: 0,
    seq: 0,
    slot: u32::MAX,
    iv: [0; 8],
    aead: AeadInputs::EMPTY,
};

const NO_SLOT: u32 = u32::MAX;

impl<B: Backend, S: SaStore<B::Key>> Engine<B, S> {
    /// Decapsulate a burst in place. `results[i]` receives the verdict for `pkts[i]`;
    /// `now` is a monotonic time in nanoseconds (for fragment timeouts).
    pub fn decap_burst<F, E>(&mut self, pkts: &mut [F], now: u64, results: &mut [InResult], events: &mut E)
    where
        F: Frame,
        E: Host,
    {
        self.now = now;
        self.expire(now);
        let n = pkts.len().min(results.len());
        let mut start = 0;
        while start < n {
            let end = (start + MAX_BURST).min(n);
            self.decap_chunk(&mut pkts[start..end], now, &mut results[start..end], events);
            start = end;
        }
    }

    fn decap_chunk<F, E>(&mut self, pkts: &mut [F], now: u64, results: &mut [InResult], events: &mut E)
    where
        F: Frame,
        E: Host,
    {
        // Scratch kept in the engine, so a burst does not initialise it anew.
        let mut scratch = self.in_meta.take().unwrap_or_else(|| Box::new([EMPTY; MAX_BURST]));
        let n = pkts.len().min(MAX_BURST);
        let meta = &mut scratch[..n];

        // Stage 1: parse and classify.
        self.counters.in_packets += n as u64;
        for ((pkt, m), res) in pkts.iter_mut().zip(meta.iter_mut()).zip(results.iter_mut()) {
            self.counters.in_bytes += pkt.len() as u64;
            *res = InResult::default();
            m.live = false;
            m.has_src = false;
            m.slot = NO_SLOT;
            if self.parse_fast(pkt, m, res) {
                m.live = true;
                continue;
            }
            match self.parse(now, pkt, m, res) {
                Ok(()) => m.live = true,
                Err(v) => self.settle_in(res, m, v),
            }
        }

        // Stage 2: look up each packet's SA (the store may look ahead across the burst
        // first, so that the lookups' memory accesses overlap) and check the packet
        // against it before any crypto (destination, encapsulation, lengths, anti-replay).
        if self.sas.looks_ahead() {
            let mut keys = [InboundAhead::default(); MAX_BURST];
            let mut k = 0;
            for m in meta.iter().filter(|m| m.live) {
                // ESP header, IV and ICV aside (the trailer stays in: a hint for the caches).
                let len = m.end.saturating_sub(m.esp + PREFIX_LEN + ICV_LEN) as u32;
                keys[k] = InboundAhead { spi: m.spi, seq: m.seq as u32, len };
                k += 1;
            }
            self.sas.look_ahead_inbound(&keys[..k]);
        }
        // The last SPI looked up in this burst and its slot: packets of one SA come in
        // runs, and the store cannot change within a stage.
        let mut last = (0u32, NO_SLOT);
        for (m, res) in meta.iter_mut().zip(results.iter_mut()) {
            if m.has_src {
                res.source = Some(Endpoint { addr: m.src, port: m.sport });
            }
            if m.live {
                if let Err(r) = self.lookup(m, &mut last) {
                    self.settle_in(res, m, InVerdict::Drop(r));
                }
            }
        }

        if !self.sas.looks_ahead() {
            // Stages 3 and 4 packet by packet: with no look-ahead every SA's state is in
            // the caches, and a packet's first and last lines still are right after its
            // crypto (a burst of 1,420-byte packets is more than L1 holds).
            for ((pkt, m), res) in pkts.iter_mut().zip(meta.iter_mut()).zip(results.iter_mut()) {
                if m.live {
                    let v = if self.open(pkt, m) {
                        self.finish(pkt, m, events)
                    } else {
                        InVerdict::Drop(DropReason::AuthFailed)
                    };
                    self.settle_in(res, m, v);
                }
            }
            self.in_meta = Some(scratch);
            return;
        }

        // Stage 3: verify and decrypt in place, the store loading each packet's key a few
        // packets before.
        for i in 0..n {
            if let Some(next) = meta.get(i + CRYPTO_AHEAD) {
                self.prepare_open(next);
            }
            let (pkt, m, res) = (&mut pkts[i], &mut meta[i], &mut results[i]);
            if m.live && !self.open(pkt, m) {
                self.settle_in(res, m, InVerdict::Drop(DropReason::AuthFailed));
            }
        }

        // Stage 4: window, trailer, inner packet, NAT, lifetime; rewrite the frame.
        for ((pkt, m), res) in pkts.iter_mut().zip(meta.iter_mut()).zip(results.iter_mut()) {
            if m.live {
                let v = self.finish(pkt, m, events);
                self.settle_in(res, m, v);
            }
        }
        self.in_meta = Some(scratch);
    }

    /// Reassemble only: if `pkt` is an outer IPv4 or IPv6 fragment of UDP or ESP, add it to
    /// the reassembly table; when it completes a datagram, the datagram replaces it in the
    /// buffer. Lets a dataplane gather fragments on one worker and then hand the whole
    /// datagram to the worker that owns its SA. Fragments held or dropped here are
    /// counted as received; a completed datagram is counted when it is decapsulated.
    pub fn reassemble<F>(&mut self, pkt: &mut F, now: u64) -> Reassembly
    where
        F: Frame,
    {
        self.expire(now);
        let len = pkt.len() as u64;
        let Ok(l2) = ethernet::Frame::new_checked(pkt.data()).and_then(|f| f.info()) else {
            return Reassembly::NotFragment;
        };
        let mut m = EMPTY;
        m.l3 = usize::from(l2.l3_offset);
        let fragment = match l2.ethertype {
            ethertype::IPV4 => ipv4::Packet::new_checked(&pkt.data()[m.l3..]).is_ok_and(|ip| ip.repr().is_fragment()),
            ethertype::IPV6 => ipv6::Packet::new_checked(&pkt.data()[m.l3..])
                .ok()
                .and_then(|ip| ipv6::walk(&pkt.data()[m.l3..m.l3 + ip.total_len()]).ok())
                .and_then(|c| c.frag)
                .is_some_and(|f| f.offset != 0 || f.more),
            _ => false,
        };
        if !fragment {
            return Reassembly::NotFragment;
        }
        let r = if l2.ethertype == ethertype::IPV4 {
            self.parse_v4(now, pkt, &mut m)
        } else {
            self.parse_v6(now, pkt, &mut m)
        };
        match r {
            // Completed: the datagram now fills the buffer; counted when decapsulated.
            Ok(None) => Reassembly::Complete,
            Ok(Some(_)) => Reassembly::NotFragment,
            Err(v) => {
                self.counters.in_packets += 1;
                self.counters.in_bytes += len;
                match v {
                    InVerdict::Held => {
                        self.counters.frag_held += 1;
                        Reassembly::Held
                    }
                    InVerdict::Drop(r) => {
                        self.counters.drop(r);
                        Reassembly::Drop(r)
                    }
                    InVerdict::Punt(p) => {
                        self.counters.punts[p as usize] += 1;
                        Reassembly::Punt(p)
                    }
                    _ => Reassembly::NotFragment,
                }
            }
        }
    }

    /// Record a final verdict and count it.
    fn settle_in(&mut self, res: &mut InResult, m: &mut Meta, v: InVerdict) {
        m.live = false;
        res.verdict = v;
        match v {
            InVerdict::Drop(r) => {
                self.counters.drop(r);
                if m.slot != NO_SLOT {
                    if let Some(e) = self.sas.entry_mut(m.slot) {
                        e.rt.count_drop(r);
                    }
                }
            }
            InVerdict::Punt(p) => self.counters.punts[p as usize] += 1,
            InVerdict::Keepalive => self.counters.keepalives += 1,
            InVerdict::Held => self.counters.frag_held += 1,
            InVerdict::Tunnel | InVerdict::Transport => {}
        }
    }

    // ---- stage 1 ----

    /// Stage 1 for the common case, in one pass over fixed offsets: an untagged frame,
    /// IPv4 with a 20-byte header and a good checksum, not a fragment, UDP to one of our
    /// NAT-T ports, an ESP header with an SPI above 255. Writes what `parse` would and
    /// returns true; for anything else (wrong, or merely less common) returns false,
    /// and `parse` classifies the frame, writing every field again. The property test
    /// `fast_parse_agrees_with_parse` holds the two to the same answers.
    #[inline(always)]
    fn parse_fast<F: Frame>(&self, pkt: &F, m: &mut Meta, res: &mut InResult) -> bool {
        const L3: usize = ethernet::HEADER_LEN;
        const L4: usize = L3 + ipv4::HEADER_LEN;
        const ESP: usize = L4 + udp::HEADER_LEN;
        let d = pkt.data();
        let Some(h) = d.first_chunk::<{ ESP + esp::PREFIX_LEN }>() else { return false };
        let Some(ip) = ipv4::basic_in_frame(d, pkt.ip_checksum()) else { return false };
        let (sport, dport, ulen) = (be16(h, L4), be16(h, L4 + 2), usize::from(be16(h, L4 + 4)));
        let spi = be32(h, ESP);
        // Not a keepalive (one byte), nor IKE (SPI 0 is its marker), nor malformed.
        if ip.is_fragment()
            || ip.protocol != proto::UDP
            || ulen < udp::HEADER_LEN + esp::HEADER_LEN
            || ulen > ip.total_len - ipv4::HEADER_LEN
            || dport == esp::IKE_PORT
            || !self.is_natt_port(dport)
            || spi < 256
        {
            return false;
        }
        m.l3 = L3;
        note_v4(m, &ip);
        m.has_src = true;
        m.sport = sport;
        m.dport = dport;
        m.spi = spi;
        m.seq = u64::from(be32(h, ESP + 4));
        m.iv = iv_at(h, ESP);
        m.encap = true;
        m.esp = ESP;
        m.end = L4 + ulen;
        res.spi = Some(spi);
        true
    }

    fn parse<F>(&mut self, now: u64, pkt: &mut F, m: &mut Meta, res: &mut InResult) -> Result<(), InVerdict>
    where
        F: Frame,
    {
        use InVerdict::{Drop, Punt};
        let l2 = ethernet::Frame::new_checked(pkt.data()).and_then(|f| f.info()).map_err(|e| {
            Drop(if e == WireError::Malformed { DropReason::StackedVlan } else { DropReason::FrameTruncated })
        })?;
        m.l3 = usize::from(l2.l3_offset);
        // At most one pass for a fragment, a second for the datagram it completed.
        for _ in 0..2 {
            let (proto, l4, end) = match l2.ethertype {
                ethertype::IPV4 => match self.parse_v4(now, pkt, m)? {
                    Some(x) => x,
                    None => continue,
                },
                ethertype::IPV6 => match self.parse_v6(now, pkt, m)? {
                    Some(x) => x,
                    None => continue,
                },
                _ => return Err(Punt(PuntReason::Host)),
            };
            let d = pkt.data();
            m.has_src = true;
            m.sport = 0;
            return match proto {
                proto::UDP => {
                    let u = udp::Packet::new_checked(&d[l4..end]).map_err(|_| Drop(DropReason::UdpHeaderInvalid))?;
                    m.sport = u.src_port();
                    m.dport = u.dst_port();
                    if m.dport == esp::IKE_PORT {
                        return Err(Punt(PuntReason::Ike));
                    }
                    if !self.is_natt_port(m.dport) {
                        return Err(Punt(PuntReason::Host));
                    }
                    match esp::classify_natt(u.payload()) {
                        NattKind::Keepalive => Err(InVerdict::Keepalive),
                        NattKind::Ike => Err(Punt(PuntReason::Ike)),
                        NattKind::Malformed => Err(Drop(DropReason::NattMalformed)),
                        NattKind::Esp(spi) => {
                            res.spi = Some(spi);
                            m.spi = spi;
                            m.seq = u64::from(be32(d, l4 + udp::HEADER_LEN + 4));
                            m.iv = iv_at(d, l4 + udp::HEADER_LEN);
                            m.encap = true;
                            m.esp = l4 + udp::HEADER_LEN;
                            m.end = l4 + u.len();
                            Ok(())
                        }
                    }
                }
                proto::ESP => {
                    if end - l4 < esp::HEADER_LEN {
                        return Err(Drop(DropReason::EspSpiReserved));
                    }
                    let spi = be32(d, l4);
                    if spi < 256 {
                        return Err(Drop(DropReason::EspSpiReserved));
                    }
                    res.spi = Some(spi);
                    m.spi = spi;
                    m.seq = u64::from(be32(d, l4 + 4));
                    m.iv = iv_at(d, l4);
                    m.encap = false;
                    m.esp = l4;
                    m.end = end;
                    Ok(())
                }
                proto::AH => Err(Drop(DropReason::AhUnsupported)),
                _ => Err(Punt(PuntReason::Host)),
            };
        }
        Err(Drop(DropReason::FragInvalid))
    }

    /// Parse an outer IPv4 header. Returns (protocol, L4 offset, end), or `None` when a
    /// fragment completed a datagram that now sits in the frame (parse again).
    fn parse_v4<F>(&mut self, now: u64, pkt: &mut F, m: &mut Meta) -> Result<Option<(u8, usize, usize)>, InVerdict>
    where
        F: Frame,
    {
        use InVerdict::{Drop, Punt};
        let l3 = m.l3;
        let nic = pkt.ip_checksum();
        let r = ipv4::check(&pkt.data()[l3..], nic).map_err(|e| Drop(e.into()))?;
        let (hl, total) = (r.header_len, r.total_len);
        note_v4(m, &r);
        if !r.is_fragment() {
            return Ok(Some((r.protocol, l3 + hl, l3 + total)));
        }
        let p = r.protocol;
        if p != proto::UDP && p != proto::ESP {
            return Err(Punt(PuntReason::Host));
        }
        let (offset, more, ident) = (r.frag_offset, r.more_frags, u32::from(r.ident));
        let f = Fragment {
            ip: &pkt.data()[l3..l3 + total],
            v6: false,
            data_offset: hl,
            unfrag_len: hl,
            offset,
            more,
            ident,
            proto: p,
            v6_prev_nh: 0,
        };
        let outcome = self.reasm.add(now, &f);
        self.reassembled(outcome, pkt, l3)
    }

    fn parse_v6<F>(&mut self, now: u64, pkt: &mut F, m: &mut Meta) -> Result<Option<(u8, usize, usize)>, InVerdict>
    where
        F: Frame,
    {
        use InVerdict::{Drop, Punt};
        let l3 = m.l3;
        let d = pkt.data();
        let ip = ipv6::Packet::new_checked(&d[l3..]).map_err(|_| Drop(DropReason::IpHeaderInvalid))?;
        let total = ip.total_len();
        m.v6 = true;
        m.src = IpAddr::V6(ip.src());
        m.dst = IpAddr::V6(ip.dst());
        m.tos = ip.traffic_class();
        m.ttl = ip.hop_limit();
        m.flow = ip.flow_label();
        let chain = ipv6::walk(&d[l3..l3 + total]).map_err(|_| Drop(DropReason::IpHeaderInvalid))?;
        match chain.frag {
            Some(f) if f.offset != 0 || f.more => {
                if f.next_header != proto::UDP && f.next_header != proto::ESP {
                    return Err(Punt(PuntReason::Host));
                }
                let frag = Fragment {
                    ip: &d[l3..l3 + total],
                    v6: true,
                    data_offset: f.header_offset + ipv6::FRAG_HEADER_LEN,
                    unfrag_len: f.header_offset,
                    offset: f.offset,
                    more: f.more,
                    ident: f.ident,
                    proto: f.next_header,
                    v6_prev_nh: f.prev_next_header_offset,
                };
                let outcome = self.reasm.add(now, &frag);
                self.reassembled(outcome, pkt, l3)
            }
            // Unfragmented, or an atomic fragment (RFC 6946) processed as such.
            _ => Ok(Some((chain.upper_protocol, l3 + chain.upper_offset, l3 + total))),
        }
    }

    /// Act on what the reassembly table did with a fragment: on completion, write the
    /// datagram over the fragment's IP packet and ask for another parse.
    fn reassembled<F>(
        &mut self,
        outcome: FragOutcome,
        pkt: &mut F,
        l3: usize,
    ) -> Result<Option<(u8, usize, usize)>, InVerdict>
    where
        F: Frame,
    {
        match outcome {
            FragOutcome::Held => Err(InVerdict::Held),
            FragOutcome::Drop { reason, also } => {
                self.counters.drops[reason as usize] += u64::from(also);
                Err(InVerdict::Drop(reason))
            }
            FragOutcome::Complete(id) => {
                let start = pkt.head() + l3;
                match self.reasm.emit(id, &mut pkt.raw_mut()[start..]) {
                    Ok((len, frags)) => {
                        self.counters.reassembled += 1;
                        self.counters.frag_absorbed += u64::from(frags - 1);
                        pkt.set_range(pkt.head(), l3 + len);
                        // A header of our own making now: what the NIC saw no longer applies.
                        pkt.set_ip_checksum(RxChecksum::Unknown);
                        Ok(None)
                    }
                    Err((reason, frags)) => {
                        self.counters.drops[reason as usize] += u64::from(frags - 1);
                        Err(InVerdict::Drop(reason))
                    }
                }
            }
        }
    }

    // ---- stage 2 ----

    /// Find the SA (`m.slot`), check everything that needs no crypto, and lay out the
    /// crypto's nonce and AAD.
    #[inline]
    fn lookup(&mut self, m: &mut Meta, last: &mut (u32, u32)) -> Result<(), DropReason> {
        m.slot = if m.spi == last.0 {
            last.1
        } else {
            let slot = self.sas.inbound(m.spi)?;
            *last = (m.spi, slot);
            slot
        };
        let sa = &self.sas.entry(m.slot).ok_or(DropReason::NoSa)?.rt;
        if sa.expired {
            return Err(DropReason::SaExpired);
        }
        if !sa.is_local(&m.dst) {
            return Err(DropReason::WrongDestination);
        }
        match (sa.encap, m.encap) {
            (Some(e), true) if e.local_port != m.dport => return Err(DropReason::WrongDestination),
            (Some(_), true) | (None, false) => {}
            _ => return Err(DropReason::EncapMismatch),
        }
        let len = m.end - m.esp;
        if len < esp::MIN_LEN {
            return Err(DropReason::EspTooShort);
        }
        if (len - PREFIX_LEN - ICV_LEN) % 4 != 0 {
            return Err(DropReason::EspMisaligned);
        }
        let seq = sa.peer.replay.full_seq(m.seq as u32).ok_or(DropReason::ReplayStale)?;
        sa.peer.replay.check(seq).map_err(replay_drop)?;
        m.seq = seq;
        m.aead = AeadInputs::new(&sa.salt, &m.iv, m.spi, seq, sa.esn);
        Ok(())
    }

    // ---- stage 3 ----

    /// Have the store load what opening `m` will read of its key.
    #[inline]
    fn prepare_open(&self, m: &Meta) {
        if m.live {
            self.sas.prepare_crypto(m.slot, m.end - m.esp - PREFIX_LEN - ICV_LEN);
        }
    }

    /// Verify and decrypt; false if the ICV does not verify.
    fn open<F>(&self, pkt: &mut F, m: &Meta) -> bool
    where
        F: Frame,
    {
        let Some(e) = self.sas.entry(m.slot) else { return false };
        let sa = &e.rt;
        let h = pkt.head();
        let raw = pkt.raw_mut();
        let (esp, end) = (h + m.esp, h + m.end);
        let n = &m.aead.nonce;
        if !sa.gmac {
            // The ciphertext and, right after it, the ICV: read where it lies.
            let Some(body) = raw.get_mut(esp + PREFIX_LEN..end) else { return false };
            let (data, icv) = body.split_at_mut(body.len().saturating_sub(ICV_LEN));
            let Ok(icv) = <&Icv>::try_from(&*icv) else { return false };
            return sa.key.open(n, m.aead.aad(), data, icv).is_ok();
        }
        let mut icv = [0u8; ICV_LEN];
        icv.copy_from_slice(&raw[end - ICV_LEN..end]);
        let seq_hi = ((m.seq >> 32) as u32).to_be_bytes();
        let ok = if sa.esn {
            // GMAC authenticates SPI || seq_hi || seq_lo || IV || payload as one AAD:
            // lay it out in place over the 4 bytes before ESP (already parsed).
            raw[esp - 4..esp].copy_from_slice(&m.spi.to_be_bytes());
            raw[esp..esp + 4].copy_from_slice(&seq_hi);
            sa.key.open(n, &raw[esp - 4..end - ICV_LEN], &mut [], &icv)
        } else {
            sa.key.open(n, &raw[esp..end - ICV_LEN], &mut [], &icv)
        };
        ok.is_ok()
    }

    // ---- stage 4 ----

    fn finish<F, E>(&mut self, pkt: &mut F, m: &Meta, events: &mut E) -> InVerdict
    where
        F: Frame,
        E: Host,
    {
        let Engine { sas, counters, cfg, .. } = self;
        let Some(e) = sas.entry_mut(m.slot) else { return InVerdict::Drop(DropReason::NoSa) };
        let sa = &mut e.rt;
        let advanced = match sa.peer.replay.check_and_accept(m.seq) {
            Ok(a) => a,
            Err(e) => return InVerdict::Drop(replay_drop(e)),
        };

        // The peer's NAT mapping, from authenticated packets that advance the window
        // (an old reordered packet must not move it back). `sport` is 0 for plain ESP.
        let mut moved = None;
        if advanced && (m.sport != sa.peer.endpoint.port || m.src != sa.peer.endpoint.addr) {
            let (old, seen) = (sa.peer.endpoint, Endpoint { addr: m.src, port: m.sport });
            sa.peer.endpoint = seen;
            sa.stats.nat_changes += 1;
            moved = Some((old, seen, if sa.nat_update { sa.paired_spi } else { None }));
        }
        let spi = sa.spi;
        let verdict = match unwrap_inner(sa, pkt, m) {
            Ok((verdict, bytes, tcp)) => {
                account(sa, bytes as u64, events);
                counters.decap_packets += 1;
                counters.decap_bytes += bytes as u64;
                if let Some((v6, hl)) = tcp {
                    counters.mss_clamped += u64::from(clamp_mss(pkt, v6, hl, sa, cfg));
                }
                verdict
            }
            Err(r) => InVerdict::Drop(r),
        };
        if let Some((old, seen, pair)) = moved {
            counters.nat_changes += 1;
            let updated = pair.filter(|p| sas.follow_nat(*p, seen));
            events.event(Event {
                spi,
                direction: Direction::Inbound,
                kind: EventKind::NatMappingChanged { old, new: seen, updated },
            });
        }
        verdict
    }
}

/// Lower the MSS of a TCP SYN that came out of the tunnel (now the frame's inner packet,
/// of the family `v6` with a header of `hl` bytes) to what fits the tunnel back: the
/// SA's outer family and encapsulation, padding to 16 at worst (the paired outbound SA's,
/// not looked up here). Returns whether it did.
fn clamp_mss<K, F: Frame>(pkt: &mut F, v6: bool, hl: usize, sa: &SaRuntime<K>, cfg: &EngineConfig) -> bool {
    let Some(ip) = pkt.data_mut().get_mut(ethernet::HEADER_LEN..) else { return false };
    if !crate::mss::is_syn(ip, hl) {
        return false;
    }
    let outer = if sa.local_v6 { ipv6::HEADER_LEN } else { ipv4::HEADER_LEN };
    let udp_len = if sa.encap.is_some() { udp::HEADER_LEN } else { 0 };
    let fits = crate::icmp_error::largest_inner(cfg.mtu, outer + udp_len + PREFIX_LEN, 16, ICV_LEN);
    cfg.mss_clamp.limit(fits, v6).is_some_and(|limit| crate::mss::clamp(ip, v6, hl, limit))
}

fn replay_drop(e: ReplayError) -> DropReason {
    match e {
        ReplayError::Duplicate => DropReason::ReplayDuplicate,
        ReplayError::Stale => DropReason::ReplayStale,
    }
}

/// Check the trailer and the inner packet and rewrite the frame around it. Returns the
/// verdict, the inner length, and for an inner TCP packet in tunnel mode its family and
/// header length (for MSS clamping).
type Unwrapped = (InVerdict, usize, Option<(bool, usize)>);

fn unwrap_inner<K, F>(sa: &SaRuntime<K>, pkt: &mut F, m: &Meta) -> Result<Unwrapped, DropReason>
where
    F: Frame,
{
    let h = pkt.head();
    let raw = pkt.raw_mut();
    let pstart = h + m.esp + PREFIX_LEN;
    let t = esp::parse_trailer(&raw[pstart..h + m.end - ICV_LEN]).map_err(|_| DropReason::BadPadding)?;
    if t.next_header == proto::NO_NEXT {
        return Err(DropReason::DummyPacket);
    }
    let plen = t.payload_len;
    match sa.mode {
        Mode::Tunnel => {
            let inner = &mut raw[pstart..pstart + plen];
            // Each family checks its own addresses, so that no `IpAddr` is carried
            // across the match.
            let (len, et, tcp) = match t.next_header {
                proto::IPV4 => {
                    let r = ipv4::check(inner, RxChecksum::Unknown).map_err(|_| DropReason::InnerMalformed)?;
                    let ecn = r.tos & 3;
                    let inside = sa.peer_has_v4(r.src.to_bits()) && sa.local_has_v4(r.dst.to_bits());
                    let new_ecn = inner_checks(inside, m, ecn)?;
                    if new_ecn != ecn {
                        ipv4::Packet::new_unchecked(&mut inner[..]).set_ecn(new_ecn);
                    }
                    (r.total_len, ethertype::IPV4, (r.protocol == proto::TCP).then_some((false, r.header_len)))
                }
                proto::IPV6 => {
                    let ip = ipv6::Packet::new_checked(&inner[..]).map_err(|_| DropReason::InnerMalformed)?;
                    let (len, ecn) = (ip.total_len(), ip.traffic_class() & 3);
                    let tcp = (ip.next_header() == proto::TCP).then_some((true, ipv6::HEADER_LEN));
                    let inside =
                        sa.sel_peer.contains_v6(ip.src().to_bits()) && sa.sel_local.contains_v6(ip.dst().to_bits());
                    let new_ecn = inner_checks(inside, m, ecn)?;
                    if new_ecn != ecn {
                        ipv6::Packet::new_unchecked(&mut inner[..]).set_ecn(new_ecn);
                    }
                    (len, ethertype::IPV6, tcp)
                }
                _ => return Err(DropReason::NextHeaderUnsupported),
            };
            let l2 = pstart - ethernet::HEADER_LEN;
            write_l2(raw, h, l2, et);
            pkt.set_range(l2, ethernet::HEADER_LEN + len);
            Ok((InVerdict::Tunnel, len, tcp))
        }
        Mode::Transport => {
            let hl = if m.v6 { ipv6::HEADER_LEN } else { ipv4::HEADER_LEN };
            let ip_at = pstart - hl;
            let l2 = ip_at - ethernet::HEADER_LEN;
            write_l2(raw, h, l2, if m.v6 { ethertype::IPV6 } else { ethertype::IPV4 });
            let ip = &mut raw[ip_at..pstart + plen];
            match (m.src, m.dst) {
                (IpAddr::V4(src), IpAddr::V4(dst)) => {
                    ipv4::Packet::new_unchecked(&mut ip[..]).emit_basic(&ipv4::Repr {
                        src,
                        dst,
                        protocol: t.next_header,
                        tos: m.tos,
                        ttl: m.ttl,
                        ident: m.ident,
                        dont_frag: m.df,
                        total_len: (hl + plen) as u16,
                    });
                }
                (IpAddr::V6(src), IpAddr::V6(dst)) => {
                    ipv6::Packet::new_unchecked(&mut ip[..]).emit(&ipv6::Repr {
                        src,
                        dst,
                        next_header: t.next_header,
                        traffic_class: m.tos,
                        flow_label: m.flow,
                        hop_limit: m.ttl,
                        payload_len: plen as u16,
                    });
                }
                _ => return Err(DropReason::InnerMalformed),
            }
            // RFC 3948 §3.1.2: the sender's checksum covers the addresses it used,
            // which a NAT changed; recompute it over the addresses we deliver.
            if m.encap {
                fix_l4_checksum(ip, m.src, m.dst, t.next_header).map_err(|_| DropReason::InnerMalformed)?;
            }
            pkt.set_range(l2, ethernet::HEADER_LEN + hl + plen);
            Ok((InVerdict::Transport, hl + plen, None))
        }
    }
}

/// The 8 bytes of IV after the ESP header at `esp`, or zeros where the frame ends first
/// (such a packet is too short, and is dropped before any crypto).
fn iv_at(d: &[u8], esp: usize) -> [u8; 8] {
    d.get(esp + esp::HEADER_LEN..).and_then(|r| r.first_chunk()).copied().unwrap_or([0; 8])
}

/// Keep what the later stages need of an outer IPv4 header.
#[inline(always)]
fn note_v4(m: &mut Meta, r: &ipv4::HeaderRepr) {
    m.v6 = false;
    m.src = IpAddr::V4(r.src);
    m.dst = IpAddr::V4(r.dst);
    m.tos = r.tos;
    m.ttl = r.ttl;
    m.ident = r.ident;
    m.df = r.dont_frag;
}

/// The tunnel-mode checks of an inner packet: its addresses within the SA's selectors
/// (`inside`: source the peer's, destination ours), and its ECN field against the outer
/// one. Returns the ECN field to deliver.
#[inline(always)]
fn inner_checks(inside: bool, m: &Meta, ecn: u8) -> Result<u8, DropReason> {
    if !inside {
        return Err(DropReason::SelectorMismatch);
    }
    // RFC 6040 §4.2 decapsulation: CE propagates, CE over Not-ECT drops, outer ECT(1)
    // over inner ECT(0) propagates.
    match (m.tos & 3, ecn) {
        (3, 0) => Err(DropReason::EcnCeNotEct),
        (3, _) => Ok(3),
        (1, 2) => Ok(1),
        _ => Ok(ecn),
    }
}

/// Write an untagged Ethernet header at `at`, keeping the MAC addresses of the frame
/// that started at `from`.
#[inline]
fn write_l2(raw: &mut [u8], from: usize, at: usize, et: u16) {
    let Some(&macs) = raw.get(from..).and_then(|r| r.first_chunk::<12>()) else { return };
    if let Some(h) = raw.get_mut(at..).and_then(|r| r.first_chunk_mut::<{ ethernet::HEADER_LEN }>()) {
        h[..12].copy_from_slice(&macs);
        h[12..].copy_from_slice(&et.to_be_bytes());
    }
}

/// Recompute the TCP, UDP or ICMPv6 checksum of the packet `ip` (fresh header of 20 or
/// 40 bytes, then the segment). IPv4 UDP with a zero checksum keeps zero (RFC 768).
pub(crate) fn fix_l4_checksum(ip: &mut [u8], src: IpAddr, dst: IpAddr, proto_: u8) -> Result<(), WireError> {
    let hl = if src.is_ipv4() { ipv4::HEADER_LEN } else { ipv6::HEADER_LEN };
    let seg = &mut ip[hl..];
    let at = match proto_ {
        proto::TCP if seg.len() >= udp::TCP_HEADER_LEN => udp::TCP_CHECKSUM_OFFSET,
        proto::UDP if seg.len() >= udp::HEADER_LEN => {
            if usize::from(u16::from_be_bytes([seg[4], seg[5]])) != seg.len() {
                return Err(WireError::Malformed);
            }
            if src.is_ipv4() && seg[6] == 0 && seg[7] == 0 {
                return Ok(());
            }
            udp::CHECKSUM_OFFSET
        }
        proto::ICMPV6 if !src.is_ipv4() && seg.len() >= 4 => 2,
        proto::TCP | proto::UDP | proto::ICMPV6 => return Err(WireError::Truncated),
        _ => return Ok(()),
    };
    seg[at] = 0;
    seg[at + 1] = 0;
    let pseudo = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => checksum::pseudo_v4(s, d, proto_, seg.len() as u16),
        (IpAddr::V6(s), IpAddr::V6(d)) => checksum::pseudo_v6(&s, &d, proto_, seg.len() as u32),
        _ => return Err(WireError::Malformed),
    };
    let mut c = checksum::l4_checksum(pseudo, seg);
    if proto_ == proto::UDP && c == 0 {
        c = 0xffff;
    }
    seg[at..at + 2].copy_from_slice(&c.to_be_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buf::PktBuf;
    use crate::engine::EngineConfig;
    use crate::sa::SaTable;
    use proptest::prelude::*;

    fn engine() -> Engine {
        Engine::with_store(EngineConfig::default(), SaTable::new(), &[4501])
    }

    /// Ethernet, IPv4 (checksum filled in), UDP from 1024 to `dport`, then `payload`.
    fn frame(dport: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x00];
        let total = (20 + 8 + payload.len()) as u16;
        f.extend_from_slice(&[0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, 64, 17, 0, 0, 198, 51, 100, 7, 203, 0, 113, 1]);
        f[16..18].copy_from_slice(&total.to_be_bytes());
        fill_ip_checksum(&mut f);
        f.extend_from_slice(&1024u16.to_be_bytes());
        f.extend_from_slice(&dport.to_be_bytes());
        f.extend_from_slice(&(8 + payload.len() as u16).to_be_bytes());
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(payload);
        f
    }

    fn fill_ip_checksum(f: &mut [u8]) {
        f[24] = 0;
        f[25] = 0;
        let c = checksum::checksum(&f[14..34]);
        f[24..26].copy_from_slice(&c.to_be_bytes());
    }

    fn esp_payload() -> Vec<u8> {
        let mut p = vec![0x00, 0x00, 0x10, 0x01, 0, 0, 0, 7];
        p.extend((0..56).map(|i| i as u8));
        p
    }

    type Parsed = (Meta, InResult);

    /// Both stage-1 parsers on one frame: the fast one's answer, if it gave one, and
    /// the full one's.
    fn both(f: &[u8], nic: RxChecksum) -> (Option<Parsed>, Result<Parsed, InVerdict>) {
        let mut e = engine();
        let mut pkt = PktBuf::from_frame(f, 64, 64);
        pkt.set_ip_checksum(nic);
        let (mut m, mut res) = (EMPTY, InResult::default());
        let fast = e.parse_fast(&pkt, &mut m, &mut res).then_some((m, res));
        let (mut m, mut res) = (EMPTY, InResult::default());
        let full = e.parse(0, &mut pkt, &mut m, &mut res).map(|()| (m, res));
        (fast, full)
    }

    #[test]
    fn fast_parse_takes_the_common_case_and_nothing_else() {
        let esp = esp_payload();
        let (fast, full) = both(&frame(4500, &esp), RxChecksum::Unknown);
        let (m, res) = fast.expect("ESP in UDP to 4500 takes the fast path");
        assert_eq!((m.spi, m.seq, m.esp, m.end, m.sport, m.dport), (0x1001, 7, 42, 42 + esp.len(), 1024, 4500));
        assert_eq!(res.spi, Some(0x1001));
        assert_eq!(full, Ok((m, res)));
        assert!(both(&frame(4501, &esp), RxChecksum::Good).0.is_some(), "an extra NAT-T port");
        // Each of these goes to the full parser, which says what it is.
        let mut vlan = frame(4500, &esp);
        vlan.splice(12..12, [0x81, 0x00, 0x00, 0x05]);
        let mut frag = frame(4500, &esp);
        frag[20] = 0x20;
        fill_ip_checksum(&mut frag);
        let mut bad_sum = frame(4500, &esp);
        bad_sum[25] ^= 1;
        type Case = (&'static str, Vec<u8>, RxChecksum, Result<(), InVerdict>);
        let cases: [Case; 8] = [
            ("keepalive", frame(4500, &[0xff]), RxChecksum::Unknown, Err(InVerdict::Keepalive)),
            (
                "IKE",
                frame(4500, &[0, 0, 0, 0, 1, 2, 3, 4, 5]),
                RxChecksum::Unknown,
                Err(InVerdict::Punt(PuntReason::Ike)),
            ),
            (
                "SPI 255",
                frame(4500, &[0, 0, 0, 255, 0, 0, 0, 1]),
                RxChecksum::Unknown,
                Err(InVerdict::Drop(DropReason::NattMalformed)),
            ),
            ("port 500", frame(500, &esp), RxChecksum::Unknown, Err(InVerdict::Punt(PuntReason::Ike))),
            ("another port", frame(53, &esp), RxChecksum::Unknown, Err(InVerdict::Punt(PuntReason::Host))),
            ("VLAN", vlan, RxChecksum::Unknown, Ok(())),
            ("fragment", frag, RxChecksum::Unknown, Err(InVerdict::Held)),
            ("checksum", bad_sum, RxChecksum::Unknown, Err(InVerdict::Drop(DropReason::IpChecksumBad))),
        ];
        for (what, f, nic, want) in cases {
            let (fast, full) = both(&f, nic);
            assert!(fast.is_none(), "{what}");
            assert_eq!(full.map(|_| ()), want, "{what}");
        }
        let (fast, full) = both(&frame(4500, &esp), RxChecksum::Bad);
        assert!(fast.is_none());
        assert_eq!(full.map(|_| ()), Err(InVerdict::Drop(DropReason::IpChecksumBad)));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20_000))]

        /// Wherever the fast parser answers, the full one gives the same answer.
        #[test]
        fn fast_parse_agrees_with_parse(
            flips in proptest::collection::vec((0usize..56, any::<u8>()), 0..4),
            cut in 0usize..80,
            refill in any::<bool>(),
            nic in prop_oneof![Just(RxChecksum::Unknown), Just(RxChecksum::Good), Just(RxChecksum::Bad)],
        ) {
            let mut f = frame(4500, &esp_payload());
            for (at, x) in flips {
                f[at] ^= x;
            }
            if refill {
                fill_ip_checksum(&mut f);
            }
            f.truncate(f.len() - cut.min(f.len()));
            let (fast, full) = both(&f, nic);
            if let Some(fast) = fast {
                prop_assert_eq!(full, Ok(fast));
            }
        }
    }
}
