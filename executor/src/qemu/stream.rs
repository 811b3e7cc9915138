//! QEMU's migration stream, as far as a relay needs to read it: which
//! connection is which, and the multifd channels' packets, whose pages a
//! tunnel can then send by reference. The layouts are those of QEMU 7.2
//! (Debian stable) and 10.0, read in their sources and checked on captured
//! streams (`docs/qemu-ram-stream.md` has every byte and where it comes
//! from). What does not match them is [`StreamError`], and the caller
//! relays the rest raw: a layout is never guessed.

use crate::content::PAGE;

/// The first four bytes of the main channel ("QEVM").
pub const FILE_MAGIC: u32 = 0x5145_564d;
/// The first four bytes of a multifd channel and of each of its packets.
pub const MULTIFD_MAGIC: u32 = 0x1122_3344;
/// The only multifd version there is, in 7.2 and in 10.0.
pub const MULTIFD_VERSION: u32 = 1;
/// A multifd channel's first packet (`MultiFDInit_t`).
pub const INIT_LEN: usize = 64;
/// What every multifd packet starts with: magic, version, flags.
pub const PACKET_START_LEN: usize = 12;
/// A RAM packet's header: 320 bytes of fields, then 128 offsets.
pub const RAM_HEADER_LEN: usize = 1344;
/// A device-state packet's header (10.0): start, idstr, instance, size.
pub const DEVICE_HEADER_LEN: usize = 276;
/// Offsets in a RAM packet: 512 KiB of 4 KiB pages.
pub const MAX_PAGES: usize = 128;
/// Largest payload a packet may announce: compressed pages can come out a
/// little larger than they went in, never by this much.
const MAX_PAYLOAD: usize = 4 * MAX_PAGES * PAGE;

const FLAG_SYNC: u32 = 0x01;
/// zlib, zstd (7.2 and 10.0); qpl, uadk, qatzip (10.0).
const FLAG_COMPRESSION: u32 = 0x3e;
/// 10.0: a device's state, not RAM.
const FLAG_DEVICE_STATE: u32 = 0x40;
const KNOWN_FLAGS: u32 = FLAG_SYNC | FLAG_COMPRESSION | FLAG_DEVICE_STATE;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    #[error("magic {0:#010x}, not a multifd packet's")]
    Magic(u32),
    #[error("multifd version {0}, not 1")]
    Version(u32),
    #[error("multifd flags {0:#x} include some neither QEMU 7.2 nor 10.0 sends")]
    Flags(u32),
    #[error("a RAM packet that does not add up: {0}")]
    Counts(String),
}

/// What a connection QEMU opens for a migration carries, by its first four bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// Sections: the header, device state, and (multifd off) the pages.
    Main,
    /// Packets of pages.
    Multifd,
    /// Anything else (TLS, postcopy's preempt channel): relayed raw.
    Unknown,
}

pub fn channel(first: [u8; 4]) -> Channel {
    match u32::from_be_bytes(first) {
        FILE_MAGIC => Channel::Main,
        MULTIFD_MAGIC => Channel::Multifd,
        _ => Channel::Unknown,
    }
}

fn be32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

fn be64(bytes: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(std::array::from_fn(|i| bytes[at + i]))
}

/// Checks a multifd channel's first packet; returns the channel's number.
pub fn init(packet: &[u8; INIT_LEN]) -> Result<u8, StreamError> {
    match (be32(packet, 0), be32(packet, 4)) {
        (MULTIFD_MAGIC, MULTIFD_VERSION) => Ok(packet[24]),
        (MULTIFD_MAGIC, version) => Err(StreamError::Version(version)),
        (magic, _) => Err(StreamError::Magic(magic)),
    }
}

/// What a packet is, from its first [`PACKET_START_LEN`] bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketKind {
    /// Its header is [`RAM_HEADER_LEN`] bytes.
    Ram,
    /// Its header is [`DEVICE_HEADER_LEN`] bytes, then an opaque blob.
    DeviceState,
}

pub fn packet_kind(start: &[u8; PACKET_START_LEN]) -> Result<PacketKind, StreamError> {
    let (magic, version, flags) = (be32(start, 0), be32(start, 4), be32(start, 8));
    if magic != MULTIFD_MAGIC {
        return Err(StreamError::Magic(magic));
    }
    if version != MULTIFD_VERSION {
        return Err(StreamError::Version(version));
    }
    if flags & !KNOWN_FLAGS != 0 {
        return Err(StreamError::Flags(flags));
    }
    Ok(if flags & FLAG_DEVICE_STATE != 0 { PacketKind::DeviceState } else { PacketKind::Ram })
}

/// Bytes of blob after a device-state packet's header.
pub fn device_payload_len(header: &[u8; DEVICE_HEADER_LEN]) -> Result<usize, StreamError> {
    let len = be32(header, 272) as usize;
    if len == 0 || len > MAX_PAYLOAD {
        return Err(StreamError::Counts(format!("a device state of {len} bytes")));
    }
    Ok(len)
}

/// A RAM packet's header, as far as its pages go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RamPacket {
    /// The RAM block its pages belong to (none in 10.0's sync packets).
    pub block: String,
    /// Byte offsets in the block of the pages whose data follows, in order.
    pub pages: Vec<u64>,
    /// Byte offsets of pages that are all zero and carry no data (10.0).
    pub zero_pages: Vec<u64>,
    /// The pages follow compressed: `payload_len` bytes opaque to a relay.
    pub compressed: bool,
    /// Bytes that follow the header.
    pub payload_len: usize,
}

/// Reads a RAM packet's header. 7.2 leaves stale block names, offsets and
/// sizes in packets without pages (they are ignored where it reads them,
/// and so here); 10.0 zeroes every packet and counts zero pages at byte
/// 32, which 7.2 leaves zero.
pub fn ram_packet(header: &[u8; RAM_HEADER_LEN]) -> Result<RamPacket, StreamError> {
    let start: &[u8; PACKET_START_LEN] = header[..PACKET_START_LEN].try_into().unwrap_or(&[0; PACKET_START_LEN]);
    if packet_kind(start)? != PacketKind::Ram {
        return Err(StreamError::Counts("a device-state packet read as RAM".into()));
    }
    let flags = be32(header, 8);
    let (allocated, normal, next_size, zero) =
        (be32(header, 12) as usize, be32(header, 16) as usize, be32(header, 20) as usize, be32(header, 32) as usize);
    if allocated > MAX_PAGES || normal + zero > allocated {
        return Err(StreamError::Counts(format!("{normal} pages and {zero} zero pages in {allocated} slots")));
    }
    let compressed = flags & FLAG_COMPRESSION != 0;
    let payload_len = match (normal, compressed) {
        (0, _) => 0,
        (_, true) if next_size <= MAX_PAYLOAD => next_size,
        (_, true) => return Err(StreamError::Counts(format!("{next_size} compressed bytes"))),
        (n, false) if next_size == n * PAGE => next_size,
        (n, false) => return Err(StreamError::Counts(format!("{n} pages in {next_size} bytes"))),
    };
    let block = if normal + zero == 0 {
        String::new()
    } else {
        let name = &header[64..320];
        let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
        String::from_utf8_lossy(&name[..end]).into_owned()
    };
    let offset = |i: usize| be64(header, 320 + 8 * i);
    let pages: Vec<u64> = (0..normal).map(offset).collect();
    let zero_pages: Vec<u64> = (normal..normal + zero).map(offset).collect();
    if pages.iter().chain(&zero_pages).any(|o| o % PAGE as u64 != 0) {
        return Err(StreamError::Counts("an offset that is not a page's".into()));
    }
    Ok(RamPacket { block, pages, zero_pages, compressed, payload_len })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A RAM packet's header as QEMU 10.0 writes it (7.2's differ only in
    /// leaving byte 32 zero and stale fields in empty packets).
    pub(crate) fn header(flags: u32, block: &str, pages: &[u64], zero_pages: &[u64], packet_num: u64) -> Vec<u8> {
        let mut h = vec![0u8; RAM_HEADER_LEN];
        h[0..4].copy_from_slice(&MULTIFD_MAGIC.to_be_bytes());
        h[4..8].copy_from_slice(&MULTIFD_VERSION.to_be_bytes());
        h[8..12].copy_from_slice(&flags.to_be_bytes());
        let allocated = if pages.is_empty() && zero_pages.is_empty() { 0 } else { MAX_PAGES as u32 };
        h[12..16].copy_from_slice(&allocated.to_be_bytes());
        h[16..20].copy_from_slice(&(pages.len() as u32).to_be_bytes());
        h[20..24].copy_from_slice(&((pages.len() * PAGE) as u32).to_be_bytes());
        h[24..32].copy_from_slice(&packet_num.to_be_bytes());
        h[32..36].copy_from_slice(&(zero_pages.len() as u32).to_be_bytes());
        h[64..64 + block.len()].copy_from_slice(block.as_bytes());
        for (i, offset) in pages.iter().chain(zero_pages).enumerate() {
            h[320 + 8 * i..328 + 8 * i].copy_from_slice(&offset.to_be_bytes());
        }
        h
    }

    pub(crate) fn init_packet(id: u8) -> [u8; INIT_LEN] {
        let mut p = [0u8; INIT_LEN];
        p[0..4].copy_from_slice(&MULTIFD_MAGIC.to_be_bytes());
        p[4..8].copy_from_slice(&MULTIFD_VERSION.to_be_bytes());
        p[24] = id;
        p
    }

    fn parse(h: &[u8]) -> Result<RamPacket, StreamError> {
        ram_packet(h.try_into().unwrap())
    }

    #[test]
    fn channels_are_told_apart_by_their_first_bytes() {
        assert_eq!(channel(*b"QEVM"), Channel::Main);
        assert_eq!(channel([0x11, 0x22, 0x33, 0x44]), Channel::Multifd);
        assert_eq!(channel([0x16, 0x03, 0x01, 0x00]), Channel::Unknown, "a TLS hello");
        assert_eq!(init(&init_packet(1)), Ok(1));
        let mut v2 = init_packet(0);
        v2[7] = 2;
        assert_eq!(init(&v2), Err(StreamError::Version(2)));
    }

    #[test]
    fn ram_packets_give_their_pages() {
        let p = parse(&header(0, "pc.ram", &[0x1000, 0xff000], &[0x2000], 7)).unwrap();
        assert_eq!(p.block, "pc.ram");
        assert_eq!(
            (p.pages, p.zero_pages, p.compressed, p.payload_len),
            (vec![0x1000, 0xff000], vec![0x2000], false, 2 * PAGE)
        );
        // A 10.0 sync packet: nothing follows.
        let sync = parse(&header(FLAG_SYNC, "", &[], &[], 8)).unwrap();
        assert_eq!((sync.pages.len(), sync.payload_len), (0, 0));
    }

    #[test]
    fn a_7_2_packet_without_pages_is_read_past_its_stale_fields() {
        // 7.2 keeps the last block name, offsets and size in an empty packet, with 128 slots.
        let mut h = header(FLAG_SYNC, "pc.ram", &[0x1000; 47], &[], 7);
        h[16..20].copy_from_slice(&0u32.to_be_bytes());
        h[12..16].copy_from_slice(&128u32.to_be_bytes());
        let p = parse(&h).unwrap();
        assert_eq!((p.pages.len(), p.payload_len, p.block.as_str()), (0, 0, ""));
    }

    #[test]
    fn what_neither_version_writes_is_refused() {
        let mut h = header(0, "pc.ram", &[0x1000], &[], 1);
        h[0] = 0;
        assert!(matches!(parse(&h), Err(StreamError::Magic(_))));
        let h = header(0x100, "pc.ram", &[0x1000], &[], 1);
        assert_eq!(parse(&h), Err(StreamError::Flags(0x100)));
        let mut h = header(0, "pc.ram", &[0x1000], &[], 1);
        h[20..24].copy_from_slice(&100u32.to_be_bytes());
        assert!(matches!(parse(&h), Err(StreamError::Counts(_))), "a size that is not the pages'");
        let mut h = header(0, "pc.ram", &[0x1000], &[], 1);
        h[12..16].copy_from_slice(&129u32.to_be_bytes());
        assert!(matches!(parse(&h), Err(StreamError::Counts(_))), "more slots than a packet has");
        let h = header(0, "pc.ram", &[0x1001], &[], 1);
        assert!(matches!(parse(&h), Err(StreamError::Counts(_))), "an offset inside a page");
        // Compressed: the payload is opaque, its size as announced.
        let mut h = header(0x4, "pc.ram", &[0x1000, 0x2000], &[], 1);
        h[20..24].copy_from_slice(&300u32.to_be_bytes());
        let p = parse(&h).unwrap();
        assert_eq!((p.compressed, p.payload_len), (true, 300));
    }
}
