//! The NBD tunnel: a disk mirror's NBD connection carried between two
//! executors with only what the destination lacks on the wire. QEMU's
//! `blockdev-mirror` has no bitmap sync, so it copies the whole disk; the
//! source executor reads the requests passing through and sends each
//! `NBD_CMD_WRITE` as [`Frame::NbdWrite`]: its header, each payload page's
//! hash and origin (zero; held by the destination's replica of the disk;
//! or sent, compressed when that saves). The destination rebuilds the
//! exact bytes from its chunk index, checks every page against its hash
//! and passes the request on; a page it cannot rebuild (a torn or stale
//! replica) it asks for again ([`Frame::Missing`]), and the source, which
//! keeps each write's referenced pages until [`Frame::Rebuilt`], sends
//! them. Everything else (the handshake, other requests, the server's
//! replies) travels as [`Frame::Relay`]; a stream the parser does not
//! understand is relayed whole, and the counters say so.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::framed::{
    ends, io_error, next_frame, relay_back, relay_piece, send, squeeze, unsqueeze, wire, Writer, HELD_WINDOW,
    RELAY_PIECE,
};
use super::TunnelCounters;
use crate::content::{hash, zero_page_hash, Hash, PAGE};
use crate::index::ChunkIndex;
use crate::lock;
use crate::nbd::{self, Request};
use crate::shaping::Shaper;
use crate::transfer::TransferError;
use crate::wire::{read_payload, ByteBuf, Frame, Origin};

/// What the destination holds of the disks behind each export, by export
/// name: the page hashes of the VM's replica there, and where that disk
/// starts in it.
#[derive(Debug, Clone, Default)]
pub struct Held {
    pub exports: HashMap<String, (u64, Arc<Vec<Hash>>)>,
}

/// Bytes of write payload sent as references and not yet rebuilt: the
/// source keeps them to resend, so this bounds its memory.
const WINDOW: usize = HELD_WINDOW;
/// The largest write taken apart; larger ones (QEMU sends at most 32 MiB) are relayed.
const MAX_WRITE: u64 = 32 << 20;

/// The pages each write sent as references (by their place in it), kept until it is rebuilt.
type Referenced = HashMap<u64, Vec<(u32, Vec<u8>)>>;

/// How the source's reader of the client's stream goes on.
enum Phase {
    /// Reading the client's options; `export` is the last one named.
    Options {
        export: Option<String>,
    },
    Transmission {
        extended: bool,
        export: Option<String>,
    },
    /// Not understood: everything is relayed.
    Raw,
}

/// Source side: carries the NBD client `local` (QEMU's mirror target) to
/// the destination executor over `remote` (after `Tunnel { end: "nbd" }`).
pub async fn send_nbd<L, R>(
    local: L,
    remote: R,
    shaper: &Shaper,
    counters: &TunnelCounters,
    held: &Held,
) -> Result<(), TransferError>
where
    L: AsyncRead + AsyncWrite,
    R: AsyncRead + AsyncWrite,
{
    let (mut local_read, mut local_write, mut remote_read, writer) = ends(local, remote);
    let pending: Mutex<Referenced> = Mutex::new(HashMap::new());
    let window = tokio::sync::Semaphore::new(WINDOW / PAGE);
    let inward_ended = std::sync::atomic::AtomicBool::new(false);

    let outward = async {
        let ctx = Ctx { writer: &writer, shaper, counters, held, pending: &pending, window: &window };
        let mut phase = Phase::Options { export: None };
        let mut flags = [0u8; 4];
        local_read.read_exact(&mut flags).await.map_err(io_error)?;
        counters.up.fetch_add(send(&writer, &Frame::Relay { len: 4 }, &flags, Some(shaper)).await?, Ordering::Relaxed);
        let mut seq = 0u64;
        loop {
            let mut magic = [0u8; 4];
            match local_read.read_exact(&mut magic).await {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                Err(e) => return Err(io_error(e)),
            }
            phase = match phase {
                Phase::Options { export } => {
                    let mut rest = [0u8; 12];
                    local_read.read_exact(&mut rest).await.map_err(io_error)?;
                    let whole = [&magic[..], &rest[..]].concat();
                    let option = u32::from_be_bytes(rest[4..8].try_into().unwrap_or_default());
                    let len = u32::from_be_bytes(rest[8..12].try_into().unwrap_or_default());
                    if u64::from_be_bytes(whole[..8].try_into().unwrap_or_default()) != nbd::IHAVEOPT || len > 64 << 10
                    {
                        counters.note_raw("an NBD handshake it does not understand");
                        relay_piece(&writer, &whole, shaper, counters).await?;
                        Phase::Raw
                    } else {
                        let mut data = vec![0u8; len as usize];
                        local_read.read_exact(&mut data).await.map_err(io_error)?;
                        relay_piece(&writer, &[whole, data.clone()].concat(), shaper, counters).await?;
                        let named = match option {
                            nbd::OPT_EXPORT_NAME => Some(String::from_utf8_lossy(&data).into_owned()),
                            nbd::OPT_GO if data.len() >= 4 => {
                                let n = u32::from_be_bytes(data[..4].try_into().unwrap_or_default()) as usize;
                                data.get(4..4 + n).map(|name| String::from_utf8_lossy(name).into_owned())
                            }
                            _ => None,
                        };
                        let export = named.or(export);
                        if option == nbd::OPT_EXPORT_NAME {
                            Phase::Transmission { extended: false, export }
                        } else if option == nbd::OPT_GO {
                            // Once the server agrees, requests follow; else more options.
                            let mut next = [0u8; 4];
                            match local_read.read_exact(&mut next).await {
                                Ok(_) => {}
                                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                                Err(e) => return Err(io_error(e)),
                            }
                            let magic = u32::from_be_bytes(next);
                            if magic == (nbd::IHAVEOPT >> 32) as u32 {
                                let mut rest = vec![0u8; 12];
                                local_read.read_exact(&mut rest).await.map_err(io_error)?;
                                counters.note_raw("NBD options after the export was chosen");
                                relay_piece(&writer, &[&next[..], &rest[..]].concat(), shaper, counters).await?;
                                Phase::Raw
                            } else {
                                let extended = magic == nbd::EXTENDED_REQUEST_MAGIC;
                                seq = request(&mut local_read, next, extended, export.as_deref(), seq, &ctx)
                                    .await?
                                    .unwrap_or(seq);
                                Phase::Transmission { extended, export }
                            }
                        } else {
                            Phase::Options { export }
                        }
                    }
                }
                Phase::Transmission { extended, export } => {
                    match request(&mut local_read, magic, extended, export.as_deref(), seq, &ctx).await? {
                        Some(next) => {
                            seq = next;
                            Phase::Transmission { extended, export }
                        }
                        None => Phase::Raw,
                    }
                }
                Phase::Raw => {
                    relay_piece(&writer, &magic, shaper, counters).await?;
                    let mut buffer = vec![0u8; RELAY_PIECE];
                    loop {
                        let n = local_read.read(&mut buffer).await.map_err(io_error)?;
                        if n == 0 {
                            break;
                        }
                        relay_piece(&writer, &buffer[..n], shaper, counters).await?;
                    }
                    break;
                }
            };
        }
        // The destination may still ask for pages of the last writes: the stream ends once
        // every write is rebuilt (or the destination is gone).
        while !inward_ended.load(Ordering::Acquire) && !lock(&pending).is_empty() {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        writer.lock().await.shutdown().await.map_err(io_error)
    };

    // The reader of the destination's frames never waits for the wire: if it did, a source
    // writing to a destination that writes to its QEMU, whose replies wait for this reader,
    // would wait on itself. Pages asked for again go out through `resending`.
    let (resend, mut to_resend) = tokio::sync::mpsc::unbounded_channel::<(Frame, Vec<u8>)>();
    let resending = async {
        while let Some((frame, data)) = to_resend.recv().await {
            counters.up.fetch_add(send(&writer, &frame, &data, Some(shaper)).await?, Ordering::Relaxed);
        }
        Ok::<(), TransferError>(())
    };
    let (pending_ref, window_ref, ended_ref) = (&pending, &window, &inward_ended);
    let inward = async move {
        let (pending, window) = (pending_ref, window_ref);
        let _ended = SetOnDrop(ended_ref);
        let (mut buffer, mut payload) = (Vec::new(), Vec::new());
        loop {
            let Some(frame) = next_frame(&mut remote_read, &mut buffer).await? else { break };
            match frame {
                Frame::Relay { len } => {
                    read_payload(&mut remote_read, len as usize, &mut payload).await.map_err(wire)?;
                    local_write.write_all(&payload).await.map_err(io_error)?;
                    counters.down.fetch_add(u64::from(len) + 4, Ordering::Relaxed);
                }
                Frame::Rebuilt { seq } => {
                    let kept = lock(pending).remove(&seq);
                    window.add_permits(kept.map_or(0, |k| k.len()));
                }
                Frame::Missing { seq, pages } => {
                    let kept = lock(pending).get(&seq).cloned().unwrap_or_default();
                    let mut data = Vec::with_capacity(pages.len() * PAGE);
                    for page in &pages {
                        let found = kept.iter().find(|(i, _)| i == page);
                        let (_, bytes) = found.ok_or_else(|| {
                            TransferError::Protocol(format!("page {page} of write {seq} was sent, not referenced"))
                        })?;
                        data.extend_from_slice(bytes);
                    }
                    counters.disk_cache.fetch_sub((pages.len() * PAGE) as u64, Ordering::Relaxed);
                    counters.resent.fetch_add((pages.len() * PAGE) as u64, Ordering::Relaxed);
                    let (compressed, data) = squeeze(data);
                    let frame = Frame::Resend { seq, compressed, len: data.len() as u32 };
                    // Ends only with `resending`, which outlives this reader.
                    let _ = resend.send((frame, data));
                }
                other => return Err(TransferError::Protocol(format!("expected relayed bytes, got {other:?}"))),
            }
        }
        local_write.shutdown().await.map_err(io_error)
    };
    tokio::try_join!(outward, inward, resending).map(|_| ())
}

/// Sets its flag when dropped: a task's end, however it ends.
struct SetOnDrop<'a>(&'a std::sync::atomic::AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

struct Ctx<'a, W> {
    writer: &'a Writer<W>,
    shaper: &'a Shaper,
    counters: &'a TunnelCounters,
    held: &'a Held,
    pending: &'a Mutex<Referenced>,
    window: &'a tokio::sync::Semaphore,
}

/// Carries one request whose magic was read; `None` if it is not one
/// (the stream is relayed raw from here), else the next write's number.
async fn request<R, W>(
    local: &mut R,
    magic: [u8; 4],
    extended: bool,
    export: Option<&str>,
    seq: u64,
    ctx: &Ctx<'_, W>,
) -> Result<Option<u64>, TransferError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let Some(len) = Request::header_len(u32::from_be_bytes(magic)) else {
        ctx.counters.note_raw("an NBD request it does not understand");
        relay_piece(ctx.writer, &magic, ctx.shaper, ctx.counters).await?;
        return Ok(None);
    };
    let mut header = magic.to_vec();
    header.resize(len, 0);
    local.read_exact(&mut header[4..]).await.map_err(io_error)?;
    let request = Request::parse(&header).ok_or_else(|| TransferError::Protocol("an NBD header".into()))?;
    let payload_len = request.payload_len(extended);
    let whole_pages = request.offset % PAGE as u64 == 0 && payload_len % PAGE as u64 == 0;
    if request.command != nbd::CMD_WRITE || !whole_pages || payload_len == 0 || payload_len > MAX_WRITE {
        relay_piece(ctx.writer, &header, ctx.shaper, ctx.counters).await?;
        let mut left = payload_len;
        let mut buffer = vec![0u8; RELAY_PIECE.min(payload_len as usize)];
        while left > 0 {
            let n = (left as usize).min(buffer.len());
            local.read_exact(&mut buffer[..n]).await.map_err(io_error)?;
            relay_piece(ctx.writer, &buffer[..n], ctx.shaper, ctx.counters).await?;
            left -= n as u64;
        }
        return Ok(Some(seq));
    }
    let mut payload = vec![0u8; payload_len as usize];
    local.read_exact(&mut payload).await.map_err(io_error)?;
    let held = export.and_then(|e| ctx.held.exports.get(e));
    let first = request.offset / PAGE as u64;
    let (mut hashes, mut origins, mut sent, mut kept) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (i, page) in payload.chunks_exact(PAGE).enumerate() {
        let h = hash(page);
        let cached = held.is_some_and(|(start, hashes)| hashes.get((start + first) as usize + i) == Some(&h));
        let origin = if h == zero_page_hash() {
            ctx.counters.zero.fetch_add(PAGE as u64, Ordering::Relaxed);
            Origin::Zero
        } else if cached {
            ctx.counters.disk_cache.fetch_add(PAGE as u64, Ordering::Relaxed);
            kept.push((i as u32, page.to_vec()));
            Origin::Cache
        } else {
            sent.extend_from_slice(page);
            Origin::Sent
        };
        hashes.push(h);
        origins.push(origin as u8);
    }
    let permits = (kept.len() as u32).min((WINDOW / PAGE) as u32);
    if permits > 0 {
        ctx.window.acquire_many(permits).await.map_err(|_| TransferError::Protocol("window closed".into()))?.forget();
        lock(ctx.pending).insert(seq, kept);
    }
    let raw = sent.len();
    let (compressed, sent) = squeeze(sent);
    ctx.counters.compression.fetch_add((raw - sent.len()) as u64, Ordering::Relaxed);
    let frame = Frame::NbdWrite {
        seq,
        header: ByteBuf::from(header),
        hashes,
        origins: ByteBuf::from(origins),
        compressed,
        len: sent.len() as u32,
    };
    let bytes = send(ctx.writer, &frame, &sent, Some(ctx.shaper)).await?;
    ctx.counters.up.fetch_add(bytes, Ordering::Relaxed);
    Ok(Some(seq + 1))
}

/// A write being rebuilt at the destination: its bytes, and the pages still missing.
struct Rebuilding {
    seq: u64,
    bytes: Vec<u8>,
    header_len: usize,
    hashes: Vec<Hash>,
    missing: Vec<u32>,
}

/// Destination side: carries the tunnel `remote` to the NBD server `local`
/// (the destination QEMU's export), rebuilding writes from `index`.
pub async fn receive_nbd<L, R>(
    local: L,
    remote: R,
    counters: &TunnelCounters,
    index: &RwLock<ChunkIndex>,
) -> Result<(), TransferError>
where
    L: AsyncRead + AsyncWrite,
    R: AsyncRead + AsyncWrite,
{
    let (mut local_read, mut local_write, mut remote_read, writer) = ends(local, remote);

    let inward = async {
        let (mut buffer, mut payload) = (Vec::new(), Vec::new());
        // Frames that came while a write waited for its missing pages, in order.
        let mut queued: VecDeque<(Frame, Vec<u8>)> = VecDeque::new();
        let mut queued_bytes = 0usize;
        let mut waiting: Option<Rebuilding> = None;
        loop {
            // While a write waits, what arrives is queued behind what came before it.
            let next = if waiting.is_none() { queued.pop_front() } else { None };
            let (frame, data) = match next {
                Some((frame, data)) => {
                    queued_bytes -= data.len();
                    (frame, data)
                }
                None => {
                    let Some(frame) = next_frame(&mut remote_read, &mut buffer).await? else { break };
                    let len = match &frame {
                        Frame::Relay { len } | Frame::NbdWrite { len, .. } | Frame::Resend { len, .. } => *len,
                        _ => 0,
                    };
                    read_payload(&mut remote_read, len as usize, &mut payload).await.map_err(wire)?;
                    counters.up.fetch_add(u64::from(len) + 4, Ordering::Relaxed);
                    (frame, std::mem::take(&mut payload))
                }
            };
            if let Some(mut write) = waiting.take() {
                match frame {
                    Frame::Resend { seq, compressed, len: _ } if seq == write.seq => {
                        let pages = unsqueeze(compressed, &data, write.missing.len() * PAGE)?;
                        for (page, bytes) in write.missing.iter().zip(pages.chunks_exact(PAGE)) {
                            if hash(bytes) != write.hashes[*page as usize] {
                                return Err(TransferError::Protocol(format!(
                                    "a resent page of write {seq} is corrupt"
                                )));
                            }
                            let at = write.header_len + *page as usize * PAGE;
                            write.bytes[at..at + PAGE].copy_from_slice(bytes);
                        }
                        local_write.write_all(&write.bytes).await.map_err(io_error)?;
                        send(&writer, &Frame::Rebuilt { seq }, &[], None).await?;
                    }
                    other => {
                        queued_bytes += data.len();
                        if queued_bytes > 2 * WINDOW {
                            return Err(TransferError::Protocol("too much arrived while a write waited".into()));
                        }
                        queued.push_back((other, data));
                        waiting = Some(write);
                    }
                }
                continue;
            }
            match frame {
                Frame::Relay { .. } => local_write.write_all(&data).await.map_err(io_error)?,
                Frame::NbdWrite { seq, header, hashes, origins, compressed, len: _ } => {
                    let write = rebuild(seq, &header, hashes, &origins, compressed, &data, index)?;
                    if write.missing.is_empty() {
                        local_write.write_all(&write.bytes).await.map_err(io_error)?;
                        send(&writer, &Frame::Rebuilt { seq }, &[], None).await?;
                    } else {
                        let missing = Frame::Missing { seq, pages: write.missing.clone() };
                        counters.down.fetch_add(send(&writer, &missing, &[], None).await?, Ordering::Relaxed);
                        waiting = Some(write);
                    }
                }
                other => return Err(TransferError::Protocol(format!("expected NBD frames, got {other:?}"))),
            }
        }
        local_write.shutdown().await.map_err(io_error)
    };

    let outward = relay_back(&mut local_read, &writer, counters);
    tokio::try_join!(inward, outward).map(|_| ())
}

/// Rebuilds a write's bytes (header, then payload) from what was sent and what `index` holds.
fn rebuild(
    seq: u64,
    header: &[u8],
    hashes: Vec<Hash>,
    origins: &[u8],
    compressed: bool,
    data: &[u8],
    index: &RwLock<ChunkIndex>,
) -> Result<Rebuilding, TransferError> {
    let request = Request::parse(header).ok_or_else(|| TransferError::Protocol("an NBD write header".into()))?;
    let pages = hashes.len();
    if request.command != nbd::CMD_WRITE || request.length != (pages * PAGE) as u64 || origins.len() != pages {
        return Err(TransferError::Protocol(format!("write {seq} does not match its pages")));
    }
    let origins: Vec<Origin> = origins
        .iter()
        .map(|&b| Origin::from_byte(b).ok_or_else(|| TransferError::Protocol(format!("origin {b}"))))
        .collect::<Result<_, _>>()?;
    let sent_count = origins.iter().filter(|&&o| o == Origin::Sent).count();
    let sent = unsqueeze(compressed, data, sent_count * PAGE)?;
    let mut bytes = header.to_vec();
    bytes.resize(header.len() + pages * PAGE, 0);
    let mut sent_pages = sent.chunks_exact(PAGE);
    let mut missing = Vec::new();
    let index = crate::read(index);
    for (i, (origin, h)) in origins.iter().zip(&hashes).enumerate() {
        let at = header.len() + i * PAGE;
        match origin {
            Origin::Zero if *h == zero_page_hash() => {}
            Origin::Sent => {
                let page = sent_pages.next().unwrap_or_default();
                if hash(page) != *h {
                    return Err(TransferError::Protocol(format!("page {i} of write {seq} is corrupt")));
                }
                bytes[at..at + PAGE].copy_from_slice(page);
            }
            Origin::Cache => match index.get(h) {
                Ok(Some((page, _))) => bytes[at..at + PAGE].copy_from_slice(&page),
                _ => missing.push(i as u32),
            },
            other => return Err(TransferError::Protocol(format!("page origin {other:?} in an NBD write"))),
        }
    }
    Ok(Rebuilding { seq, bytes, header_len: header.len(), hashes, missing })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::Holding;

    fn page(byte: u8) -> Vec<u8> {
        vec![byte; PAGE]
    }

    /// A client's option (`OPT_GO` for export `name`) as it goes on the wire.
    fn go(name: &str) -> Vec<u8> {
        let mut data = (name.len() as u32).to_be_bytes().to_vec();
        data.extend_from_slice(name.as_bytes());
        data.extend_from_slice(&0u16.to_be_bytes());
        let mut option = nbd::IHAVEOPT.to_be_bytes().to_vec();
        option.extend_from_slice(&nbd::OPT_GO.to_be_bytes());
        option.extend_from_slice(&(data.len() as u32).to_be_bytes());
        option.extend_from_slice(&data);
        option
    }

    fn write_request(cookie: u64, offset: u64, payload: &[u8]) -> Vec<u8> {
        let mut r = nbd::REQUEST_MAGIC.to_be_bytes().to_vec();
        r.extend_from_slice(&0u16.to_be_bytes());
        r.extend_from_slice(&nbd::CMD_WRITE.to_be_bytes());
        r.extend_from_slice(&cookie.to_be_bytes());
        r.extend_from_slice(&offset.to_be_bytes());
        r.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        r.extend_from_slice(payload);
        r
    }

    /// Writes whose pages the destination holds (or is said to hold, but
    /// lost) cross as references; the server gets exactly the client's bytes.
    #[tokio::test]
    async fn writes_are_rebuilt_from_the_index_and_what_it_lacks_is_sent_again() {
        let dir = tempfile::tempdir().unwrap();
        let held_file = dir.path().join("replica.img");
        std::fs::write(&held_file, [page(0x11), page(0x22)].concat()).unwrap();
        let mut index = ChunkIndex::open(&dir.path().join("index"), 1 << 30).unwrap();
        index.register_file(&held_file, Holding::Replica).unwrap();
        // The replica tears after it was indexed: its page 0x22 no longer reads back.
        std::fs::write(&held_file, [page(0x11), page(0x99)].concat()).unwrap();
        let index = RwLock::new(index);
        let replica = vec![hash(&page(0x11)), hash(&page(0x22)), zero_page_hash(), zero_page_hash()];
        let held = Held { exports: HashMap::from([("d".to_owned(), (0, Arc::new(replica)))]) };

        let first = [page(0x11), page(0x22), page(0), page(0x33)].concat();
        let second = [page(0x22), page(0x11)].concat();
        let mut client_bytes = vec![0, 0, 0, 3];
        client_bytes.extend(go("d"));
        client_bytes.extend(write_request(1, 0, &first));
        client_bytes.extend(write_request(2, 0, &second));

        let (mut client, client_end) = tokio::io::duplex(1 << 20);
        let (source_end, destination_end) = tokio::io::duplex(1 << 20);
        let (server_end, mut server) = tokio::io::duplex(1 << 20);
        let (up, down) = (TunnelCounters::default(), TunnelCounters::default());
        let shaper = Shaper::new(None);
        let sending = send_nbd(client_end, source_end, &shaper, &up, &held);
        let receiving = receive_nbd(server_end, destination_end, &down, &index);
        let talk = async {
            client.write_all(&client_bytes).await.unwrap();
            client.shutdown().await.unwrap();
            let mut got = Vec::new();
            server.read_to_end(&mut got).await.unwrap();
            server.write_all(b"replies").await.unwrap();
            server.shutdown().await.unwrap();
            let mut back = Vec::new();
            client.read_to_end(&mut back).await.unwrap();
            (got, back)
        };
        let (sent, received, (got, back)) = tokio::join!(sending, receiving, talk);
        sent.unwrap();
        received.unwrap();
        assert!(got == client_bytes, "the server got other bytes than the client sent");
        assert_eq!(back, b"replies");
        let (zero, cache, resent) =
            (up.zero.load(Ordering::Relaxed), up.disk_cache.load(Ordering::Relaxed), up.resent.load(Ordering::Relaxed));
        // Referenced only where the replica holds that page at that place: 0x11 came from it;
        // 0x22 was referenced, missing and sent again; the second write's swapped pages were sent.
        assert_eq!((zero, cache, resent), (PAGE as u64, PAGE as u64, PAGE as u64));
    }
}
