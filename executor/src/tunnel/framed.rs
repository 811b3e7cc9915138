//! What the framed tunnels (NBD writes, multifd packets) share: both
//! connections split with one shared writer to the peer, frames written
//! with their payload outside the encoding, raw bytes relayed in pieces,
//! and page payloads compressed where that saves.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};

use super::TunnelCounters;
use crate::shaping::Shaper;
use crate::transfer::TransferError;
use crate::wire::{encode, read_frame_with, write_with_payload, Frame};

/// Bytes of pages a source holds for its peer's answer (a reference to
/// rebuild, an offer to answer): this bounds its memory per tunnel.
pub(super) const HELD_WINDOW: usize = 64 << 20;
/// Relayed bytes go in pieces of at most this.
pub(super) const RELAY_PIECE: usize = 256 << 10;
/// zstd level for the pages sent: the tunnel runs at the migration's pace.
const LEVEL: i32 = 1;

pub(super) fn wire(e: impl Into<crate::wire::WireError>) -> TransferError {
    TransferError::Wire(e.into())
}

pub(super) fn io_error(e: std::io::Error) -> TransferError {
    TransferError::Wire(crate::wire::WireError::Io(e))
}

pub(super) type Writer<W> = Arc<tokio::sync::Mutex<W>>;

/// Writes a frame and its payload, shaped when `shaper` is given; returns the bytes.
pub(super) async fn send<W: AsyncWrite + Unpin>(
    writer: &Writer<W>,
    frame: &Frame,
    payload: &[u8],
    shaper: Option<&Shaper>,
) -> Result<u64, TransferError> {
    let bytes = encode(frame).map_err(wire)?;
    if let Some(shaper) = shaper {
        shaper.take((bytes.len() + payload.len()) as u64).await;
    }
    let mut w = writer.lock().await;
    write_with_payload(&mut *w, &bytes, &[payload]).await.map_err(wire)
}

pub(super) type Ends<L, R> = (ReadHalf<L>, WriteHalf<L>, ReadHalf<R>, Writer<WriteHalf<R>>);

/// Both connections of a tunnel split: the local one's halves, the
/// remote's reading half, and its writing half shared by what sends.
pub(super) fn ends<L, R>(local: L, remote: R) -> Ends<L, R>
where
    L: AsyncRead + AsyncWrite,
    R: AsyncRead + AsyncWrite,
{
    let (local_read, local_write) = tokio::io::split(local);
    let (remote_read, remote_write) = tokio::io::split(remote);
    (local_read, local_write, remote_read, Arc::new(tokio::sync::Mutex::new(remote_write)))
}

/// The peer's next frame; `None` once it has closed its side between frames.
pub(super) async fn next_frame<R: AsyncRead + Unpin>(
    remote: &mut R,
    buffer: &mut Vec<u8>,
) -> Result<Option<Frame>, TransferError> {
    match read_frame_with(remote, buffer).await {
        Ok(frame) => Ok(Some(frame)),
        Err(crate::wire::WireError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(wire(e)),
    }
}

/// Sends `bytes` to be passed on as they are, shaped and counted as sent.
pub(super) async fn relay_piece<W: AsyncWrite + Unpin>(
    writer: &Writer<W>,
    bytes: &[u8],
    shaper: &Shaper,
    counters: &TunnelCounters,
) -> Result<(), TransferError> {
    for piece in bytes.chunks(RELAY_PIECE) {
        let frame = Frame::Relay { len: piece.len() as u32 };
        counters.up.fetch_add(send(writer, &frame, piece, Some(shaper)).await?, Ordering::Relaxed);
    }
    Ok(())
}

/// Destination side: carries what the local end sends back (the
/// hypervisor's replies) to the source as relayed bytes, unshaped and
/// counted as `down`, then shuts the peer's writing half.
pub(super) async fn relay_back<R, W>(
    local: &mut R,
    writer: &Writer<W>,
    counters: &TunnelCounters,
) -> Result<(), TransferError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buffer = vec![0u8; RELAY_PIECE];
    loop {
        let n = local.read(&mut buffer).await.map_err(io_error)?;
        if n == 0 {
            break;
        }
        let sent = send(writer, &Frame::Relay { len: n as u32 }, &buffer[..n], None).await?;
        counters.down.fetch_add(sent, Ordering::Relaxed);
    }
    writer.lock().await.shutdown().await.map_err(io_error)
}

/// Compresses `data` when that saves; returns (compressed, bytes to send).
pub(super) fn squeeze(data: Vec<u8>) -> (bool, Vec<u8>) {
    match zstd::bulk::compress(&data, LEVEL) {
        Ok(small) if small.len() < data.len() => (true, small),
        _ => (false, data),
    }
}

pub(super) fn unsqueeze(compressed: bool, data: &[u8], expected: usize) -> Result<Vec<u8>, TransferError> {
    let data = if compressed {
        zstd::bulk::decompress(data, expected).map_err(|e| TransferError::Protocol(format!("pages: {e}")))?
    } else {
        data.to_vec()
    };
    if data.len() != expected {
        return Err(TransferError::Protocol(format!("{} bytes of pages where {expected} were due", data.len())));
    }
    Ok(data)
}
