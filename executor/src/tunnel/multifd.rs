//! The multifd tunnel: one of QEMU's multifd memory channels carried
//! between two executors with only the pages the destination lacks on the
//! wire. The source executor reads the channel's packets
//! ([`crate::qemu::stream`]), hashes each 4 KiB page and offers the
//! hashes ([`Frame::RamOffer`]) ahead of the packet; the destination
//! answers where it gets each page ([`Frame::Need`]: all zero, its chunk
//! index's disk replicas or kept images, or sent) and takes those pages
//! out of its index at once, so that nothing it promised can go before
//! the packet comes. The source then sends the packet ([`Frame::RamPacket`]):
//! its header as QEMU wrote it and the pages the destination lacks,
//! compressed where that saves. The destination rebuilds the exact bytes,
//! checks every page against its offered hash, and passes them on.
//!
//! Offers run ahead of packets by up to [`HELD_WINDOW`] of pages, so the
//! round trip does not stall the stream. Everything else (the channel's
//! first packet, compressed or device-state packets, packets without
//! pages) travels as [`Frame::Relay`] in its place in the stream; a packet
//! neither QEMU 7.2 nor 10.0 writes ends the parsing, and the rest of the
//! channel is relayed raw, the counters saying why.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::RwLock;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::framed::{
    ends, io_error, next_frame, relay_back, relay_piece, send, squeeze, unsqueeze, wire, HELD_WINDOW, RELAY_PIECE,
};
use super::TunnelCounters;
use crate::content::{hash, zero_page_hash, Hash, PAGE};
use crate::index::{ChunkIndex, Holding};
use crate::qemu::stream::{self, PacketKind, RamPacket, DEVICE_HEADER_LEN, INIT_LEN, PACKET_START_LEN, RAM_HEADER_LEN};
use crate::ram_image::RamImage;
use crate::shaping::Shaper;
use crate::transfer::TransferError;
use crate::wire::{read_payload, ByteBuf, Frame, Origin};

/// What the source's reader hands its sender, in stream order.
enum Unit {
    /// Bytes to pass on as they are.
    Raw(Vec<u8>),
    /// A packet whose pages were offered: sent once the offer is answered.
    Offered { header: Vec<u8>, pages: Vec<u8>, hashes: Vec<Hash> },
}

/// Reads exactly `buf.len()` bytes; `false` if the stream ended before the first.
async fn read_unit<R: AsyncRead + Unpin>(from: &mut R, buf: &mut [u8]) -> Result<bool, TransferError> {
    let mut got = 0;
    while got < buf.len() {
        match from.read(&mut buf[got..]).await.map_err(io_error)? {
            0 if got == 0 => return Ok(false),
            0 => return Err(TransferError::Protocol("a multifd packet cut short".into())),
            n => got += n,
        }
    }
    Ok(true)
}

/// Source side: carries the multifd channel `local` (whose first four
/// bytes, `first`, were read to tell what it is) to the destination
/// executor over `remote` (after `Tunnel { end: "multifd" }`), writing
/// every page that leaves to `image`.
pub async fn send_multifd<L, R>(
    first: [u8; 4],
    local: L,
    remote: R,
    shaper: &Shaper,
    counters: &TunnelCounters,
    image: Option<&RamImage>,
) -> Result<(), TransferError>
where
    L: AsyncRead + AsyncWrite,
    R: AsyncRead + AsyncWrite,
{
    let (mut local_read, mut local_write, mut remote_read, writer) = ends(local, remote);
    let window = tokio::sync::Semaphore::new(HELD_WINDOW / PAGE);
    // Units are small or hold window permits: the queue's bound is only against raw floods.
    let (queue, mut queued) = tokio::sync::mpsc::channel::<Unit>(64);
    let (answer, mut answers) = tokio::sync::mpsc::unbounded_channel::<ByteBuf>();
    // Offers sent and not yet answered: an answer beyond them is the peer's error, not memory to keep.
    let unanswered = std::sync::atomic::AtomicUsize::new(0);
    let closed = || TransferError::Protocol("the tunnel's sender stopped".into());

    let reading = async {
        // Owned here, so that the sender sees the queue end when reading does.
        let queue = queue;
        let mut init = [0u8; INIT_LEN];
        init[..4].copy_from_slice(&first);
        local_read.read_exact(&mut init[4..]).await.map_err(io_error)?;
        let mut understood = stream::init(&init).map(|_| ());
        queue.send(Unit::Raw(init.to_vec())).await.map_err(|_| closed())?;
        while understood.is_ok() {
            let mut start = [0u8; PACKET_START_LEN];
            if !read_unit(&mut local_read, &mut start).await? {
                return Ok(());
            }
            let kind = match stream::packet_kind(&start) {
                Ok(kind) => kind,
                Err(e) => {
                    queue.send(Unit::Raw(start.to_vec())).await.map_err(|_| closed())?;
                    understood = Err(e);
                    break;
                }
            };
            let header_len = if kind == PacketKind::Ram { RAM_HEADER_LEN } else { DEVICE_HEADER_LEN };
            let mut header = vec![0u8; header_len];
            header[..PACKET_START_LEN].copy_from_slice(&start);
            local_read.read_exact(&mut header[PACKET_START_LEN..]).await.map_err(io_error)?;
            let parsed = match kind {
                PacketKind::Ram => stream::ram_packet(header.as_slice().try_into().unwrap_or(&[0; RAM_HEADER_LEN]))
                    .map(|p| (p.payload_len, Some(p))),
                PacketKind::DeviceState => {
                    stream::device_payload_len(header.as_slice().try_into().unwrap_or(&[0; DEVICE_HEADER_LEN]))
                        .map(|len| (len, None))
                }
            };
            let (payload_len, packet) = match parsed {
                Ok(parsed) => parsed,
                Err(e) => {
                    queue.send(Unit::Raw(header)).await.map_err(|_| closed())?;
                    understood = Err(e);
                    break;
                }
            };
            let mut payload = vec![0u8; payload_len];
            local_read.read_exact(&mut payload).await.map_err(io_error)?;
            match packet {
                Some(packet) if !packet.compressed => {
                    // QEMU 10.0 finds zero pages itself and sends only their offsets.
                    counters.zero.fetch_add((packet.zero_pages.len() * PAGE) as u64, Ordering::Relaxed);
                    if let Some(image) = image {
                        image.write(&packet.block, &packet.pages, &payload);
                        image.zero(&packet.block, &packet.zero_pages);
                    }
                    if packet.pages.is_empty() {
                        queue.send(Unit::Raw(header)).await.map_err(|_| closed())?;
                        continue;
                    }
                    let hashes: Vec<Hash> = payload.chunks_exact(PAGE).map(hash).collect();
                    window.acquire_many(hashes.len() as u32).await.map_err(|_| closed())?.forget();
                    let offer = Frame::RamOffer { hashes: hashes.clone() };
                    unanswered.fetch_add(1, Ordering::AcqRel);
                    counters.up.fetch_add(send(&writer, &offer, &[], Some(shaper)).await?, Ordering::Relaxed);
                    queue.send(Unit::Offered { header, pages: payload, hashes }).await.map_err(|_| closed())?;
                }
                _ => {
                    header.extend_from_slice(&payload);
                    queue.send(Unit::Raw(header)).await.map_err(|_| closed())?;
                }
            }
        }
        if let Err(e) = understood {
            counters.note_raw(&format!("a multifd channel it does not understand: {e}"));
            let mut buffer = vec![0u8; RELAY_PIECE];
            loop {
                let n = local_read.read(&mut buffer).await.map_err(io_error)?;
                if n == 0 {
                    break;
                }
                queue.send(Unit::Raw(buffer[..n].to_vec())).await.map_err(|_| closed())?;
            }
        }
        Ok::<(), TransferError>(())
    };

    let sending = async {
        while let Some(unit) = queued.recv().await {
            match unit {
                Unit::Raw(bytes) => relay_piece(&writer, &bytes, shaper, counters).await?,
                Unit::Offered { header, pages, hashes } => {
                    let origins = answers
                        .recv()
                        .await
                        .ok_or_else(|| TransferError::Protocol("the destination answered no offer".into()))?;
                    if origins.len() != hashes.len() {
                        return Err(TransferError::Protocol("an answer that is not the offer's".into()));
                    }
                    let mut sent = Vec::new();
                    for (&byte, page) in origins.iter().zip(pages.chunks_exact(PAGE)) {
                        let saved = match Origin::from_byte(byte) {
                            Some(Origin::Sent) => {
                                sent.extend_from_slice(page);
                                None
                            }
                            Some(Origin::Zero) => Some(&counters.zero),
                            Some(Origin::Cache) => Some(&counters.disk_cache),
                            Some(Origin::Index) => Some(&counters.dedup),
                            Some(Origin::Returning) => Some(&counters.returning),
                            _ => {
                                return Err(TransferError::Protocol(format!("page origin {byte} in a multifd answer")))
                            }
                        };
                        if let Some(counter) = saved {
                            counter.fetch_add(PAGE as u64, Ordering::Relaxed);
                        }
                    }
                    let raw = sent.len();
                    let (compressed, sent) = squeeze(sent);
                    counters.compression.fetch_add((raw - sent.len()) as u64, Ordering::Relaxed);
                    let frame =
                        Frame::RamPacket { header: ByteBuf::from(header), origins, compressed, len: sent.len() as u32 };
                    counters.up.fetch_add(send(&writer, &frame, &sent, Some(shaper)).await?, Ordering::Relaxed);
                    window.add_permits(hashes.len());
                }
            }
        }
        writer.lock().await.shutdown().await.map_err(io_error)
    };

    let listening = async {
        // Owned here: should the destination end without answering, the sender hears it.
        let answer = answer;
        let (mut buffer, mut payload) = (Vec::new(), Vec::new());
        loop {
            let Some(frame) = next_frame(&mut remote_read, &mut buffer).await? else { break };
            match frame {
                Frame::Need { origins } => {
                    let offered = unanswered.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
                    if offered.is_err() || origins.len() > stream::MAX_PAGES {
                        return Err(TransferError::Protocol("an answer to no offer".into()));
                    }
                    // The sender outlives every offer it waits on; if it has stopped, so does this.
                    let _ = answer.send(origins);
                }
                Frame::Relay { len } => {
                    read_payload(&mut remote_read, len as usize, &mut payload).await.map_err(wire)?;
                    local_write.write_all(&payload).await.map_err(io_error)?;
                    counters.down.fetch_add(u64::from(len) + 4, Ordering::Relaxed);
                }
                other => return Err(TransferError::Protocol(format!("expected answers, got {other:?}"))),
            }
        }
        local_write.shutdown().await.map_err(io_error)
    };
    tokio::try_join!(reading, sending, listening).map(|_| ())
}

/// An offer the destination answered: the pages it took from its index
/// (by their place in the packet), and what it expects sent.
struct Promise {
    hashes: Vec<Hash>,
    origins: Vec<Origin>,
    held: Vec<Option<Vec<u8>>>,
}

/// Destination side: carries the tunnel `remote` to QEMU's incoming
/// migration socket `local`, rebuilding packets from `index` and writing
/// every page that arrives to `image`. Pages of the VM's own earlier
/// images here (its image's siblings) count as it returning.
pub async fn receive_multifd<L, R>(
    local: L,
    remote: R,
    counters: &TunnelCounters,
    index: &RwLock<ChunkIndex>,
    image: Option<&RamImage>,
) -> Result<(), TransferError>
where
    L: AsyncRead + AsyncWrite,
    R: AsyncRead + AsyncWrite,
{
    let (mut local_read, mut local_write, mut remote_read, writer) = ends(local, remote);
    let inward = async {
        let (mut buffer, mut payload) = (Vec::new(), Vec::new());
        let mut promised: VecDeque<Promise> = VecDeque::new();
        let mut promised_pages = 0usize;
        loop {
            let Some(frame) = next_frame(&mut remote_read, &mut buffer).await? else { break };
            let len = match &frame {
                Frame::Relay { len } | Frame::RamPacket { len, .. } => *len,
                _ => 0,
            };
            read_payload(&mut remote_read, len as usize, &mut payload).await.map_err(wire)?;
            counters.up.fetch_add(u64::from(len) + 4, Ordering::Relaxed);
            match frame {
                Frame::Relay { .. } => local_write.write_all(&payload).await.map_err(io_error)?,
                Frame::RamOffer { hashes } => {
                    if hashes.is_empty() || hashes.len() > stream::MAX_PAGES {
                        return Err(TransferError::Protocol(format!("an offer of {} pages", hashes.len())));
                    }
                    if promised_pages + hashes.len() > 2 * HELD_WINDOW / PAGE {
                        return Err(TransferError::Protocol("more offered than a source may hold".into()));
                    }
                    let own = image.and_then(|i| i.dir().parent());
                    let promise = answer_offer(hashes, index, own);
                    let origins = ByteBuf::from(promise.origins.iter().map(|&o| o as u8).collect::<Vec<u8>>());
                    counters
                        .down
                        .fetch_add(send(&writer, &Frame::Need { origins }, &[], None).await?, Ordering::Relaxed);
                    promised_pages += promise.hashes.len();
                    promised.push_back(promise);
                }
                Frame::RamPacket { header, origins, compressed, len: _ } => {
                    let promise = promised
                        .pop_front()
                        .ok_or_else(|| TransferError::Protocol("a packet that was never offered".into()))?;
                    promised_pages -= promise.hashes.len();
                    let (packet, bytes) = rebuild(&header, &origins, compressed, &payload, promise)?;
                    local_write.write_all(&bytes).await.map_err(io_error)?;
                    if let Some(image) = image {
                        image.write(&packet.block, &packet.pages, &bytes[RAM_HEADER_LEN..]);
                        image.zero(&packet.block, &packet.zero_pages);
                    }
                }
                other => return Err(TransferError::Protocol(format!("expected multifd frames, got {other:?}"))),
            }
        }
        if !promised.is_empty() {
            return Err(TransferError::Protocol("the channel ended with packets offered and never sent".into()));
        }
        local_write.shutdown().await.map_err(io_error)
    };
    let outward = relay_back(&mut local_read, &writer, counters);
    tokio::try_join!(inward, outward).map(|_| ())
}

/// Where each offered page comes from, with the pages the index gives
/// taken now (checked against their hashes as it reads them); pages of
/// files in `own` are the VM's own, kept when it last left.
fn answer_offer(hashes: Vec<Hash>, index: &RwLock<ChunkIndex>, own: Option<&Path>) -> Promise {
    let index = crate::read(index);
    let (mut origins, mut held) = (Vec::with_capacity(hashes.len()), Vec::with_capacity(hashes.len()));
    for h in &hashes {
        let (origin, page) = if *h == zero_page_hash() {
            (Origin::Zero, None)
        } else {
            // A page the index cannot read (a disk error) is simply sent.
            let found = index.get(h).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "a held page could not be read");
                None
            });
            match found {
                Some((page, Holding::Replica)) => (Origin::Cache, Some(page)),
                Some((page, Holding::Image))
                    if own.is_some_and(|own| index.file_of(h).is_some_and(|f| f.starts_with(own))) =>
                {
                    (Origin::Returning, Some(page))
                }
                Some((page, Holding::Image)) => (Origin::Index, Some(page)),
                None => (Origin::Sent, None),
            }
        };
        origins.push(origin);
        held.push(page);
    }
    Promise { hashes, origins, held }
}

/// A packet's bytes as QEMU wrote them: its header, then each page from
/// where its promise said, every one checked against its offered hash.
fn rebuild(
    header: &[u8],
    origins: &[u8],
    compressed: bool,
    data: &[u8],
    promise: Promise,
) -> Result<(RamPacket, Vec<u8>), TransferError> {
    let corrupt = |what: &str| TransferError::Protocol(format!("a multifd packet's {what}"));
    let header: &[u8; RAM_HEADER_LEN] = header.try_into().map_err(|_| corrupt("header"))?;
    let packet = stream::ram_packet(header).map_err(|e| TransferError::Protocol(e.to_string()))?;
    let Promise { hashes, origins: promised, held } = promise;
    if packet.compressed || packet.pages.len() != hashes.len() {
        return Err(corrupt("pages are not those offered"));
    }
    if origins.len() != promised.len() || origins.iter().zip(&promised).any(|(&b, &o)| b != o as u8) {
        return Err(corrupt("origins are not those answered"));
    }
    let sent_count = promised.iter().filter(|&&o| o == Origin::Sent).count();
    let sent = unsqueeze(compressed, data, sent_count * PAGE)?;
    let mut sent_pages = sent.chunks_exact(PAGE);
    let mut bytes = Vec::with_capacity(RAM_HEADER_LEN + hashes.len() * PAGE);
    bytes.extend_from_slice(header);
    for ((origin, h), page) in promised.iter().zip(&hashes).zip(held) {
        match (origin, page) {
            (Origin::Zero, _) => bytes.resize(bytes.len() + PAGE, 0),
            (Origin::Sent, _) => {
                let page = sent_pages.next().unwrap_or_default();
                if hash(page) != *h {
                    return Err(corrupt("page that was sent is not the one offered"));
                }
                bytes.extend_from_slice(page);
            }
            (_, Some(page)) => bytes.extend_from_slice(&page),
            (_, None) => return Err(corrupt("promise has no page")),
        }
    }
    Ok((packet, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qemu::stream::tests::{header, init_packet};

    fn page(byte: u8) -> Vec<u8> {
        vec![byte; PAGE]
    }

    /// Relays `channel` through both ends; returns what QEMU at the
    /// destination got and the source's counters.
    async fn carry(channel: &[u8], index: &RwLock<ChunkIndex>) -> (Vec<u8>, TunnelCounters) {
        let (mut qemu, local) = tokio::io::duplex(1 << 20);
        let (source_end, destination_end) = tokio::io::duplex(1 << 20);
        let (server_end, mut incoming) = tokio::io::duplex(1 << 20);
        let (up, down) = (TunnelCounters::default(), TunnelCounters::default());
        let shaper = Shaper::new(None);
        let sending = async {
            let mut first = [0u8; 4];
            let mut local = local;
            local.read_exact(&mut first).await.unwrap();
            send_multifd(first, local, source_end, &shaper, &up, None).await
        };
        let receiving = receive_multifd(server_end, destination_end, &down, index, None);
        let talk = async {
            qemu.write_all(channel).await.unwrap();
            qemu.shutdown().await.unwrap();
            let mut got = Vec::new();
            incoming.read_to_end(&mut got).await.unwrap();
            incoming.shutdown().await.unwrap();
            got
        };
        let (sent, received, got) = tokio::join!(sending, receiving, talk);
        sent.unwrap();
        received.unwrap();
        (got, up)
    }

    fn index_holding(dir: &std::path::Path, pages: &[Vec<u8>], holding: Holding) -> RwLock<ChunkIndex> {
        let file = dir.join(format!("{holding:?}.img"));
        std::fs::write(&file, pages.concat()).unwrap();
        let mut index = ChunkIndex::open(&dir.join("index"), 1 << 30).unwrap();
        index.register_file(&file, holding).unwrap();
        RwLock::new(index)
    }

    /// Pages the destination holds cross as references; QEMU there gets
    /// exactly the bytes QEMU at the source wrote, packets without pages
    /// and all.
    #[tokio::test]
    async fn packets_are_rebuilt_byte_for_byte_from_what_the_destination_holds() {
        let dir = tempfile::tempdir().unwrap();
        let index = index_holding(dir.path(), &[page(0x11), page(0x22)], Holding::Replica);
        let mut channel = init_packet(1).to_vec();
        // Page cache (0x11), a zero page sent as data, and two pages the destination lacks.
        channel.extend(header(0, "pc.ram", &[0x1000, 0x2000, 0x3000, 0x4000], &[0x5000], 1));
        channel.extend([page(0x11), page(0), page(0x33), page(0x44)].concat());
        channel.extend(header(1, "", &[], &[], 2));
        channel.extend(header(0, "pc.ram", &[0x9000], &[], 3));
        channel.extend(page(0x22));
        let (got, up) = carry(&channel, &index).await;
        assert!(got == channel, "QEMU at the destination got other bytes");
        let saved = up.saved();
        assert_eq!((saved.zero, saved.disk_cache), (2 * PAGE as u64, 2 * PAGE as u64));
        assert!(up.up() < (channel.len() - 3 * PAGE) as u64, "{} bytes crossed", up.up());
        assert_eq!(up.raw(), None);
    }

    /// A packet neither version writes: what follows is relayed as it is,
    /// and the counters say why.
    #[tokio::test]
    async fn an_unknown_packet_is_relayed_raw_from_there_on() {
        let dir = tempfile::tempdir().unwrap();
        let index = index_holding(dir.path(), &[page(0x11)], Holding::Image);
        let mut channel = init_packet(0).to_vec();
        channel.extend(header(0, "pc.ram", &[0x1000], &[], 1));
        channel.extend(page(0x11));
        let mut future = header(0, "pc.ram", &[0x2000], &[], 2);
        future[7] = 2;
        channel.extend(future);
        channel.extend(page(0x11));
        let (got, up) = carry(&channel, &index).await;
        assert!(got == channel);
        assert_eq!(up.saved().dedup, PAGE as u64, "the first packet's page came from the index");
        assert!(up.raw().is_some_and(|why| why.contains("version 2")), "{:?}", up.raw());
    }
}
