//! The NBD protocol (the NBD project's `proto.md`), the two parts an
//! executor needs: a client that reads a running QEMU's disk through QEMU's
//! own read-only export (the extents a dirty bitmap marks, as block status,
//! then their data), and the request headers a tunnel reads to tell which
//! bytes of a mirror's stream are disk writes.
//!
//! Hand-written, and small: the Rust NBD crates either lack block status
//! and structured replies (`nbd`) or bind the C library libnbd, which every
//! site would then need. The client is blocking (a local unix socket, read
//! where the transfer stack reads image files) and asks for nothing it does
//! not use: fixed newstyle, structured replies, one meta context.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// "IHAVEOPT": starts every option the client sends.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// A request header: 28 bytes.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// A request header once extended headers are negotiated: 32 bytes.
pub const EXTENDED_REQUEST_MAGIC: u32 = 0x21e4_1c71;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

const FLAG_FIXED_NEWSTYLE: u16 = 1;
const FLAG_NO_ZEROES: u16 = 2;

/// Options (client to server, during the handshake).
pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_GO: u32 = 7;
const OPT_STRUCTURED_REPLY: u32 = 8;
const OPT_SET_META_CONTEXT: u32 = 10;
const REP_ACK: u32 = 1;
const REP_INFO: u32 = 3;
const REP_META_CONTEXT: u32 = 4;
const REP_ERROR_BIT: u32 = 1 << 31;
const INFO_EXPORT: u16 = 0;

/// Commands.
pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
const CMD_DISC: u16 = 2;
const CMD_BLOCK_STATUS: u16 = 7;
/// With extended headers, a command other than a write carries `length` bytes of payload.
pub const CMD_FLAG_PAYLOAD_LEN: u16 = 1 << 5;

const REPLY_FLAG_DONE: u16 = 1;
const REPLY_NONE: u16 = 0;
const REPLY_OFFSET_DATA: u16 = 1;
const REPLY_OFFSET_HOLE: u16 = 2;
const REPLY_BLOCK_STATUS: u16 = 5;
const REPLY_ERROR_BIT: u16 = 1 << 15;

/// The meta context of a disk's allocation: a hole reads as zeros.
pub const BASE_ALLOCATION: &str = "base:allocation";
/// In `base:allocation`, the extent reads as zeros.
pub const STATE_ZERO: u32 = 2;
/// In `qemu:dirty-bitmap:NAME`, the extent was written while the bitmap recorded.
pub const STATE_DIRTY: u32 = 1;

/// The largest reply payload the client takes (QEMU sends at most 32 MiB per read).
const MAX_REPLY: u32 = 64 << 20;
/// How much one block status request asks about.
const STATUS_SPAN: u64 = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub enum NbdError {
    #[error("NBD connection: {0}")]
    Io(#[from] io::Error),
    #[error("NBD server refused {0}")]
    Refused(String),
    #[error("NBD protocol: {0}")]
    Protocol(String),
}

/// The header of one request, as a client sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub flags: u16,
    pub command: u16,
    pub cookie: u64,
    pub offset: u64,
    pub length: u64,
}

impl Request {
    /// The header's size for a request starting with `magic` (`None`: not a request).
    pub fn header_len(magic: u32) -> Option<usize> {
        match magic {
            REQUEST_MAGIC => Some(28),
            EXTENDED_REQUEST_MAGIC => Some(32),
            _ => None,
        }
    }

    /// Reads a header of [`Request::header_len`] bytes (magic included).
    pub fn parse(header: &[u8]) -> Option<Request> {
        let magic = u32::from_be_bytes(header.get(..4)?.try_into().ok()?);
        let (length, size) = match magic {
            REQUEST_MAGIC => (u64::from(u32::from_be_bytes(header.get(24..28)?.try_into().ok()?)), 28),
            EXTENDED_REQUEST_MAGIC => (u64::from_be_bytes(header.get(24..32)?.try_into().ok()?), 32),
            _ => return None,
        };
        (header.len() == size).then(|| Request {
            flags: u16::from_be_bytes([header[4], header[5]]),
            command: u16::from_be_bytes([header[6], header[7]]),
            cookie: u64::from_be_bytes(header[8..16].try_into().unwrap_or_default()),
            offset: u64::from_be_bytes(header[16..24].try_into().unwrap_or_default()),
            length,
        })
    }

    /// The payload that follows the header on the wire.
    pub fn payload_len(&self, extended: bool) -> u64 {
        if self.command == CMD_WRITE || (extended && self.flags & CMD_FLAG_PAYLOAD_LEN != 0) {
            self.length
        } else {
            0
        }
    }

    fn encode(&self) -> [u8; 28] {
        let mut h = [0u8; 28];
        h[..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        h[4..6].copy_from_slice(&self.flags.to_be_bytes());
        h[6..8].copy_from_slice(&self.command.to_be_bytes());
        h[8..16].copy_from_slice(&self.cookie.to_be_bytes());
        h[16..24].copy_from_slice(&self.offset.to_be_bytes());
        h[24..28].copy_from_slice(&(self.length as u32).to_be_bytes());
        h
    }
}

/// A run of a disk with the same status: `flags` as the meta context defines them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub offset: u64,
    pub length: u64,
    pub flags: u32,
}

/// A connection to one export, in transmission.
pub struct Client {
    stream: UnixStream,
    size: u64,
    contexts: HashMap<String, u32>,
    cookie: u64,
}

fn be_u16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}
fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}
fn be_u64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[..8].try_into().unwrap_or_default())
}

fn protocol(what: impl Into<String>) -> NbdError {
    NbdError::Protocol(what.into())
}

impl Client {
    /// Connects to export `export` of the server at `socket`, asking for
    /// structured replies and the meta contexts `contexts`.
    pub fn connect(socket: &Path, export: &str, contexts: &[&str]) -> Result<Client, NbdError> {
        let mut stream = UnixStream::connect(socket)?;
        stream.set_read_timeout(Some(std::time::Duration::from_secs(60)))?;
        let mut greeting = [0u8; 18];
        stream.read_exact(&mut greeting)?;
        if be_u64(&greeting) != NBDMAGIC || be_u64(&greeting[8..]) != IHAVEOPT {
            return Err(protocol("not a newstyle NBD server"));
        }
        let server_flags = be_u16(&greeting[16..]);
        if server_flags & FLAG_FIXED_NEWSTYLE == 0 {
            return Err(protocol("the server is not fixed newstyle"));
        }
        let client_flags = u32::from(FLAG_FIXED_NEWSTYLE | (server_flags & FLAG_NO_ZEROES));
        stream.write_all(&client_flags.to_be_bytes())?;
        let mut client = Client { stream, size: 0, contexts: HashMap::new(), cookie: 0 };

        client.option(OPT_STRUCTURED_REPLY, &[])?;
        client.replies(OPT_STRUCTURED_REPLY, |_, _| Ok(()))?;

        let mut export_name = (export.len() as u32).to_be_bytes().to_vec();
        export_name.extend_from_slice(export.as_bytes());
        if !contexts.is_empty() {
            let mut data = export_name.clone();
            data.extend_from_slice(&(contexts.len() as u32).to_be_bytes());
            for context in contexts {
                data.extend_from_slice(&(context.len() as u32).to_be_bytes());
                data.extend_from_slice(context.as_bytes());
            }
            client.option(OPT_SET_META_CONTEXT, &data)?;
            let mut found = HashMap::new();
            client.replies(OPT_SET_META_CONTEXT, |kind, data| {
                if kind == REP_META_CONTEXT && data.len() >= 4 {
                    found.insert(String::from_utf8_lossy(&data[4..]).into_owned(), be_u32(data));
                }
                Ok(())
            })?;
            if let Some(missing) = contexts.iter().find(|c| !found.contains_key(**c)) {
                return Err(NbdError::Refused(format!("meta context {missing}")));
            }
            client.contexts = found;
        }

        let mut go = export_name;
        go.extend_from_slice(&0u16.to_be_bytes());
        client.option(OPT_GO, &go)?;
        let mut size = None;
        client.replies(OPT_GO, |kind, data| {
            if kind == REP_INFO && data.len() >= 12 && be_u16(data) == INFO_EXPORT {
                size = Some(be_u64(&data[2..]));
            }
            Ok(())
        })?;
        client.size = size.ok_or_else(|| protocol("the server named no export size"))?;
        Ok(client)
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    fn option(&mut self, option: u32, data: &[u8]) -> Result<(), NbdError> {
        let mut bytes = IHAVEOPT.to_be_bytes().to_vec();
        bytes.extend_from_slice(&option.to_be_bytes());
        bytes.extend_from_slice(&(data.len() as u32).to_be_bytes());
        bytes.extend_from_slice(data);
        Ok(self.stream.write_all(&bytes)?)
    }

    /// Reads the replies to `option` up to its acknowledgement, each given to `each`.
    fn replies(
        &mut self,
        option: u32,
        mut each: impl FnMut(u32, &[u8]) -> Result<(), NbdError>,
    ) -> Result<(), NbdError> {
        loop {
            let mut header = [0u8; 20];
            self.stream.read_exact(&mut header)?;
            let (kind, len) = (be_u32(&header[12..]), be_u32(&header[16..]));
            if be_u64(&header) != OPTION_REPLY_MAGIC || be_u32(&header[8..]) != option {
                return Err(protocol(format!("a reply that does not answer option {option}")));
            }
            if len > 64 << 10 {
                return Err(protocol(format!("an option reply of {len} bytes")));
            }
            let mut data = vec![0u8; len as usize];
            self.stream.read_exact(&mut data)?;
            if kind & REP_ERROR_BIT != 0 {
                return Err(NbdError::Refused(format!("option {option}: {}", String::from_utf8_lossy(&data))));
            }
            if kind == REP_ACK {
                return Ok(());
            }
            each(kind, &data)?;
        }
    }

    fn request(&mut self, command: u16, offset: u64, length: u32) -> Result<u64, NbdError> {
        self.cookie += 1;
        let request = Request { flags: 0, command, cookie: self.cookie, offset, length: u64::from(length) };
        self.stream.write_all(&request.encode())?;
        Ok(self.cookie)
    }

    /// Reads the reply chunks to request `cookie`, each (type, payload) given to `each`.
    fn chunks(
        &mut self,
        cookie: u64,
        mut each: impl FnMut(u16, &[u8]) -> Result<(), NbdError>,
    ) -> Result<(), NbdError> {
        let mut payload = Vec::new();
        loop {
            let mut magic = [0u8; 4];
            self.stream.read_exact(&mut magic)?;
            match be_u32(&magic) {
                SIMPLE_REPLY_MAGIC => {
                    let mut rest = [0u8; 12];
                    self.stream.read_exact(&mut rest)?;
                    return match be_u32(&rest) {
                        0 if be_u64(&rest[4..]) == cookie => Ok(()),
                        0 => Err(protocol("a reply to another request")),
                        errno => Err(NbdError::Refused(format!("a request: error {errno}"))),
                    };
                }
                STRUCTURED_REPLY_MAGIC => {
                    let mut rest = [0u8; 16];
                    self.stream.read_exact(&mut rest)?;
                    let (flags, kind, len) = (be_u16(&rest), be_u16(&rest[2..]), be_u32(&rest[12..]));
                    if be_u64(&rest[4..]) != cookie {
                        return Err(protocol("a reply to another request"));
                    }
                    if len > MAX_REPLY {
                        return Err(protocol(format!("a reply chunk of {len} bytes")));
                    }
                    payload.resize(len as usize, 0);
                    self.stream.read_exact(&mut payload)?;
                    if kind & REPLY_ERROR_BIT != 0 {
                        let message = payload.get(6..).map(String::from_utf8_lossy).unwrap_or_default();
                        let errno = payload.get(..4).map_or(0, be_u32);
                        return Err(NbdError::Refused(format!("a request: error {errno} {message}")));
                    }
                    if kind != REPLY_NONE {
                        each(kind, &payload)?;
                    }
                    if flags & REPLY_FLAG_DONE != 0 {
                        return Ok(());
                    }
                }
                other => return Err(protocol(format!("a reply with magic {other:#x}"))),
            }
        }
    }

    /// Reads `buf.len()` bytes at `offset` (holes read as zeros).
    pub fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), NbdError> {
        let length = u32::try_from(buf.len()).map_err(|_| protocol("a read over 4 GiB"))?;
        buf.fill(0);
        let cookie = self.request(CMD_READ, offset, length)?;
        self.chunks(cookie, |kind, payload| {
            if payload.len() < 8 {
                return Err(protocol("a read chunk without its offset"));
            }
            let at = be_u64(payload).checked_sub(offset).ok_or_else(|| protocol("a read chunk before the request"))?;
            let at = at as usize;
            match kind {
                REPLY_OFFSET_DATA => {
                    let data = &payload[8..];
                    buf.get_mut(at..at + data.len())
                        .ok_or_else(|| protocol("a read chunk past the request"))?
                        .copy_from_slice(data);
                }
                REPLY_OFFSET_HOLE => {
                    let hole = payload.get(8..12).map(be_u32).unwrap_or(0) as usize;
                    buf.get(at..at + hole).ok_or_else(|| protocol("a hole past the request"))?;
                }
                other => return Err(protocol(format!("a read chunk of type {other}"))),
            }
            Ok(())
        })?;
        Ok(())
    }

    /// The whole disk's extents in meta context `context`, in order.
    pub fn extents(&mut self, context: &str) -> Result<Vec<Extent>, NbdError> {
        let id =
            *self.contexts.get(context).ok_or_else(|| protocol(format!("meta context {context} not negotiated")))?;
        let mut extents = Vec::new();
        let mut offset = 0;
        while offset < self.size {
            let span = (self.size - offset).min(STATUS_SPAN) as u32;
            let cookie = self.request(CMD_BLOCK_STATUS, offset, span)?;
            let mut next = offset;
            self.chunks(cookie, |kind, payload| {
                if kind != REPLY_BLOCK_STATUS || payload.len() < 4 || be_u32(payload) != id {
                    return Ok(());
                }
                for descriptor in payload[4..].chunks_exact(8) {
                    let length = u64::from(be_u32(descriptor));
                    extents.push(Extent { offset: next, length, flags: be_u32(&descriptor[4..]) });
                    next += length;
                }
                Ok(())
            })?;
            if next == offset {
                return Err(protocol("block status described nothing"));
            }
            offset = next.min(self.size);
        }
        Ok(extents)
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.cookie += 1;
        let disconnect = Request { flags: 0, command: CMD_DISC, cookie: self.cookie, offset: 0, length: 0 };
        let _ = self.stream.write_all(&disconnect.encode());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn request_headers_parse_in_both_sizes() {
        let write = Request { flags: 0, command: CMD_WRITE, cookie: 9, offset: 1 << 20, length: 65536 };
        let compact = write.encode();
        assert_eq!(Request::header_len(be_u32(&compact)), Some(28));
        assert_eq!(Request::parse(&compact), Some(write));
        assert_eq!(write.payload_len(false), 65536);

        let mut extended = EXTENDED_REQUEST_MAGIC.to_be_bytes().to_vec();
        extended.extend_from_slice(&CMD_FLAG_PAYLOAD_LEN.to_be_bytes());
        extended.extend_from_slice(&CMD_BLOCK_STATUS.to_be_bytes());
        extended.extend_from_slice(&3u64.to_be_bytes());
        extended.extend_from_slice(&0u64.to_be_bytes());
        extended.extend_from_slice(&16u64.to_be_bytes());
        let status = Request::parse(&extended).unwrap();
        assert_eq!((status.command, status.payload_len(true)), (CMD_BLOCK_STATUS, 16));
        assert_eq!(Request::parse(&compact[..20]), None);
        assert_eq!(Request::header_len(0xdead_beef), None);
    }

    /// Against `qemu-nbd` (qemu-utils): extents and reads of a qcow2 disk
    /// with data in two places and a zero hole between.
    #[test]
    fn reads_a_qemu_export_and_its_allocation() {
        if Command::new("qemu-nbd").arg("--version").output().is_err() {
            assert!(std::env::var_os("CI").is_none(), "qemu-nbd (qemu-utils) is needed under CI");
            eprintln!("skipped: qemu-nbd (qemu-utils) is not installed");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("d.qcow2");
        let run = |program: &str, args: &[&str]| {
            let out = Command::new(program).args(args).output().unwrap();
            assert!(out.status.success(), "{program}: {}", String::from_utf8_lossy(&out.stderr));
        };
        let name = disk.to_str().unwrap();
        run("qemu-img", &["create", "-q", "-f", "qcow2", name, "8M"]);
        run("qemu-io", &["-f", "qcow2", "-c", "write -P 0x5a 1M 128k", "-c", "write -P 0x17 6M 64k", name]);
        let socket = dir.path().join("nbd.sock");
        let mut server = Command::new("qemu-nbd")
            .args(["-r", "-t", "-e", "2", "-f", "qcow2", "-x", "d", "-k", socket.to_str().unwrap(), name])
            .spawn()
            .unwrap();
        let mut client = None;
        for _ in 0..100 {
            match Client::connect(&socket, "d", &[BASE_ALLOCATION]) {
                Ok(c) => {
                    client = Some(c);
                    break;
                }
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(50)),
            }
        }
        let mut client = client.expect("qemu-nbd serves");
        assert_eq!(client.size(), 8 << 20);
        let data: Vec<(u64, u64)> = client
            .extents(BASE_ALLOCATION)
            .unwrap()
            .into_iter()
            .filter(|e| e.flags & STATE_ZERO == 0)
            .map(|e| (e.offset, e.length))
            .collect();
        assert_eq!(data, vec![(1 << 20, 128 << 10), (6 << 20, 64 << 10)]);
        let mut buf = vec![1u8; 256 << 10];
        client.read((1 << 20) - (64 << 10), &mut buf).unwrap();
        assert!(buf[..64 << 10].iter().all(|&b| b == 0), "the hole reads as zeros");
        assert!(buf[64 << 10..192 << 10].iter().all(|&b| b == 0x5a));
        assert!(buf[192 << 10..].iter().all(|&b| b == 0));
        assert!(matches!(Client::connect(&socket, "d", &["qemu:dirty-bitmap:none"]), Err(NbdError::Refused(_))));
        drop(client);
        let _ = server.kill();
        let _ = server.wait();
    }
}
