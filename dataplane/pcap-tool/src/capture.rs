//! Captures in and out: pcap or pcapng files read into Ethernet frames with timestamps,
//! and pcap files written. Raw-IP and Linux cooked (SLL, SLL2) captures, as `tcpdump -i
//! any` makes, are given a synthetic Ethernet header so the engine sees one framing.

use pcap_file::pcap::{PcapHeader, PcapPacket, PcapReader, PcapWriter};
use pcap_file::pcapng::{Block, PcapNgReader};
use pcap_file::{DataLink, TsResolution};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;
use std::time::Duration;

/// One captured frame, as Ethernet.
pub struct Frame {
    pub timestamp: Duration,
    pub data: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}: not a pcap or pcapng file ({detail})")]
    Format { path: String, detail: String },
    #[error(
        "{path}: the capture ends inside packet {record} (cut short while it was being written?); the {} before it were processed",
        .record - 1
    )]
    Truncated { path: String, record: u64 },
    #[error("{path}: packet {record} cannot be read ({detail}); the {} before it were processed", .record - 1)]
    Record { path: String, record: u64, detail: String },
    #[error(
        "{path}: link type {linktype:?} is not supported; capture with Ethernet framing (or raw IP / Linux cooked)"
    )]
    LinkType { path: String, linktype: DataLink },
}

enum Inner {
    Pcap(PcapReader<BufReader<File>>, DataLink),
    PcapNg(PcapNgReader<BufReader<File>>),
}

/// Reads frames from a pcap or pcapng file.
pub struct CaptureReader {
    path: String,
    inner: Inner,
    /// Packet records read so far (the number of the next, less one).
    records: u64,
}

impl CaptureReader {
    pub fn open(path: &Path) -> Result<Self, CaptureError> {
        let name = path.display().to_string();
        let io = |source| CaptureError::Io { path: name.clone(), source };
        let mut f = File::open(path).map_err(io)?;
        let mut magic = [0u8; 4];
        f.read_exact(&mut magic).map_err(|e| CaptureError::Format { path: name.clone(), detail: e.to_string() })?;
        let f = BufReader::new(File::open(path).map_err(io)?);
        let fmt = |e: pcap_file::PcapError| CaptureError::Format { path: name.clone(), detail: e.to_string() };
        let inner = if magic == [0x0a, 0x0d, 0x0d, 0x0a] {
            Inner::PcapNg(PcapNgReader::new(f).map_err(fmt)?)
        } else {
            let r = PcapReader::new(f).map_err(fmt)?;
            let dl = r.header().datalink;
            check_linktype(&name, dl)?;
            Inner::Pcap(r, dl)
        };
        Ok(CaptureReader { path: name, inner, records: 0 })
    }

    /// The next frame, `None` at the end. A record that cannot be read is an error
    /// naming it (the frames before it are good): `Truncated` if the file ends inside it.
    pub fn next_frame(&mut self) -> Option<Result<Frame, CaptureError>> {
        self.records += 1;
        let (path, record) = (self.path.clone(), self.records);
        let fmt = move |e: pcap_file::PcapError| match e {
            pcap_file::PcapError::IncompleteBuffer => CaptureError::Truncated { path: path.clone(), record },
            pcap_file::PcapError::IoError(ref io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
                CaptureError::Truncated { path: path.clone(), record }
            }
            e => CaptureError::Record { path: path.clone(), record, detail: e.to_string() },
        };
        match &mut self.inner {
            Inner::Pcap(r, dl) => {
                let dl = *dl;
                let p = match r.next_packet()? {
                    Ok(p) => p,
                    Err(e) => return Some(Err(fmt(e))),
                };
                Some(Ok(Frame { timestamp: p.timestamp, data: to_ethernet(dl, &p.data) }))
            }
            Inner::PcapNg(r) => loop {
                let block = match r.next_block()? {
                    Ok(b) => b,
                    Err(e) => return Some(Err(fmt(e))),
                };
                let (ts, data, ifid) = match block {
                    Block::EnhancedPacket(p) => (p.timestamp, p.data.into_owned(), p.interface_id as usize),
                    Block::SimplePacket(p) => (Duration::ZERO, p.data.into_owned(), 0),
                    _ => continue,
                };
                let Some(dl) = r.interfaces().get(ifid).map(|i| i.linktype) else {
                    return Some(Err(CaptureError::Record {
                        path: self.path.clone(),
                        record,
                        detail: format!("captured on interface {ifid}, which the file does not declare"),
                    }));
                };
                if let Err(e) = check_linktype(&self.path, dl) {
                    return Some(Err(e));
                }
                return Some(Ok(Frame { timestamp: ts, data: to_ethernet(dl, &data) }));
            },
        }
    }
}

fn check_linktype(path: &str, dl: DataLink) -> Result<(), CaptureError> {
    match dl {
        DataLink::ETHERNET
        | DataLink::RAW
        | DataLink::IPV4
        | DataLink::IPV6
        | DataLink::LINUX_SLL
        | DataLink::LINUX_SLL2 => Ok(()),
        other => Err(CaptureError::LinkType { path: path.to_owned(), linktype: other }),
    }
}

/// Give a frame of a supported link type an Ethernet header.
fn to_ethernet(dl: DataLink, data: &[u8]) -> Vec<u8> {
    let eth = |et: u16, l3: &[u8]| {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&et.to_be_bytes());
        f.extend_from_slice(l3);
        f
    };
    let by_version = |l3: &[u8]| match l3.first().map(|b| b >> 4) {
        Some(6) => 0x86dd,
        _ => 0x0800,
    };
    match dl {
        DataLink::RAW | DataLink::IPV4 | DataLink::IPV6 => eth(by_version(data), data),
        // SLL: 16-byte header, protocol in bytes 14..16. SLL2: 20 bytes, protocol first.
        DataLink::LINUX_SLL if data.len() >= 16 => eth(u16::from_be_bytes([data[14], data[15]]), &data[16..]),
        DataLink::LINUX_SLL2 if data.len() >= 20 => eth(u16::from_be_bytes([data[0], data[1]]), &data[20..]),
        _ => data.to_vec(),
    }
}

/// Writes Ethernet frames to a pcap file (nanosecond timestamps).
pub struct CaptureWriter {
    w: PcapWriter<BufWriter<File>>,
}

impl CaptureWriter {
    pub fn create(path: &Path) -> Result<Self, CaptureError> {
        let name = path.display().to_string();
        let f = File::create(path).map_err(|source| CaptureError::Io { path: name.clone(), source })?;
        let header = PcapHeader {
            datalink: DataLink::ETHERNET,
            ts_resolution: TsResolution::NanoSecond,
            endianness: pcap_file::Endianness::Little,
            snaplen: 65535,
            ..PcapHeader::default()
        };
        let w = PcapWriter::with_header(BufWriter::new(f), header)
            .map_err(|e| CaptureError::Format { path: name, detail: e.to_string() })?;
        Ok(CaptureWriter { w })
    }

    pub fn write(&mut self, timestamp: Duration, data: &[u8]) -> Result<(), pcap_file::PcapError> {
        self.w.write_packet(&PcapPacket::new(timestamp, data.len() as u32, data)).map(|_| ())
    }

    /// Flush what is buffered, reporting an error (a full disk) that dropping would not.
    pub fn finish(self) -> std::io::Result<()> {
        self.w.into_writer().flush()
    }
}
