//! Two executors' transfer stacks over real TCP on localhost: cold and warm
//! destinations, integrity, authentication, resuming after a dropped
//! connection, and pre-copy of a running guest.

use heliotrope_executor::content::{hash, Hash, PAGE};
use heliotrope_executor::index::ChunkIndex;
use heliotrope_executor::precopy::{migrate_guest, PrecopyError, PrecopyOptions};
use heliotrope_executor::shaping::Shaper;
use heliotrope_executor::sim::{generate, ContentMix, SimGuest};
use heliotrope_executor::transfer::{receive, send, send_resuming, Counters, Received, SendOptions, TransferError};
use heliotrope_executor::wire::{nonce, proof, read_frame, write_frame, Frame, VERSION};
use tokio::net::{TcpListener, TcpStream};

const SECRET: &[u8] = b"job-7-secret";

/// A destination with its data in `dir` (its index in `index/`, images landing in `vm/`),
/// listening on a free port for one session; returns its address and outcome.
async fn destination(
    dir: &std::path::Path,
    warm_disk: Option<Vec<u8>>,
) -> (String, tokio::task::JoinHandle<Result<Received, TransferError>>) {
    let (index_dir, out) = (dir.join("index"), dir.join("vm"));
    std::fs::create_dir_all(&out).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let task = tokio::spawn(async move {
        let mut index = ChunkIndex::open(&index_dir, 1 << 30).unwrap();
        if let Some(disk) = warm_disk {
            // A replica of the VM's disk, cached here ahead of time.
            let replica = index_dir.join("replica-disk.img");
            std::fs::write(&replica, disk).unwrap();
            index.register_file(&replica).unwrap();
        }
        let (mut stream, _) = listener.accept().await.unwrap();
        stream.set_nodelay(true).unwrap();
        receive(&mut stream, |job| (job == 7).then(|| SECRET.to_vec()), &mut index, &out).await
    });
    (addr, task)
}

/// A source's connection to `addr`.
async fn connect(addr: &str) -> TcpStream {
    let stream = TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

async fn migrate(addr: &str, secret: &[u8], memory: &[u8], disk: &[u8]) -> Result<Counters, TransferError> {
    let mut stream = connect(addr).await;
    let options = SendOptions { level: 3, shapers: Vec::new() };
    send(&mut stream, 7, secret, &[("memory.img", memory), ("disk.img", disk)], &options).await
}

#[tokio::test]
async fn cold_and_warm_destinations_end_with_identical_images() {
    let images = generate(8 << 20, 16 << 20, &ContentMix::default(), 11, 12);
    let raw = (images.memory.len() + images.disk.len()) as u64;
    let mut wire = Vec::new();
    for warm in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("vm");
        let (addr, dest) = destination(dir.path(), warm.then(|| images.disk.clone())).await;
        let counters = migrate(&addr, SECRET, &images.memory, &images.disk).await.unwrap();
        let received = dest.await.unwrap().unwrap();
        assert_eq!(received.images.len(), 2);
        assert!(std::fs::read(out.join("memory.img")).unwrap() == images.memory);
        assert!(std::fs::read(out.join("disk.img")).unwrap() == images.disk);
        assert_eq!(counters.raw_bytes, raw);
        assert!(counters.zero_pages > 0 && counters.held_pages > 0, "{counters:?}");
        wire.push(counters.wire_bytes as f64 / raw as f64);
    }
    // Cold: zero pages and page-cache pages (equal to disk blocks sent once) are not sent again;
    // the random rest does not compress. Warm: the disk and the page cache are already there.
    assert!(wire[0] < 0.85, "cold wire ratio {}", wire[0]);
    assert!(wire[1] < 0.25, "warm wire ratio {}", wire[1]);
}

#[tokio::test]
async fn a_wrong_secret_is_refused_and_nothing_is_kept() {
    let images = generate(1 << 20, 1 << 20, &ContentMix::default(), 1, 2);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("vm");
    let (addr, dest) = destination(dir.path(), None).await;
    // The source checks the destination's proof first, sees it was made with another secret, and stops.
    let err = migrate(&addr, b"guessed", &images.memory, &images.disk).await.unwrap_err();
    assert!(err.to_string().contains("does not hold this job's secret"), "{err}");
    assert!(dest.await.unwrap().is_err());
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0);

    // A source that ignores the challenge and answers with a made-up proof is refused.
    let (addr, dest) = destination(dir.path(), None).await;
    let mut s = connect(&addr).await;
    write_frame(&mut s, &Frame::Hello { version: VERSION, job: 7, nonce: nonce() }).await.unwrap();
    assert!(matches!(read_frame(&mut s).await.unwrap(), Frame::Challenge { .. }));
    write_frame(&mut s, &Frame::Proof { proof: [0; 32] }).await.unwrap();
    assert_eq!(read_frame(&mut s).await.unwrap(), Frame::Refused { reason: "wrong job secret".into() });
    assert!(dest.await.unwrap().unwrap_err().to_string().contains("wrong job secret"));
    // So is an unknown job, and a protocol version from elsewhere.
    for (version, job, expected) in [(VERSION, 8, "no job 8 here"), (VERSION + 1, 7, "protocol version")] {
        let (addr, dest) = destination(dir.path(), None).await;
        let mut s = connect(&addr).await;
        write_frame(&mut s, &Frame::Hello { version, job, nonce: nonce() }).await.unwrap();
        assert!(matches!(read_frame(&mut s).await.unwrap(), Frame::Refused { reason } if reason.contains(expected)));
        assert!(dest.await.unwrap().is_err());
    }
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0);
}

/// Speaks the protocol by hand as a faulty source that sends one page whose bytes do not match its hash.
#[tokio::test]
async fn a_corrupted_page_is_caught_and_the_image_not_kept() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("vm");
    let (addr, dest) = destination(dir.path(), None).await;
    let mut s = connect(&addr).await;
    let mine = nonce();
    write_frame(&mut s, &Frame::Hello { version: VERSION, job: 7, nonce: mine }).await.unwrap();
    let Frame::Challenge { nonce: theirs, .. } = read_frame(&mut s).await.unwrap() else { panic!("no challenge") };
    write_frame(&mut s, &Frame::Proof { proof: proof(SECRET, "source", 7, &theirs, &mine) }).await.unwrap();
    assert_eq!(read_frame(&mut s).await.unwrap(), Frame::Accepted);
    let page = vec![42u8; PAGE];
    let h: Hash = hash(&page);
    write_frame(&mut s, &Frame::Image { name: "memory.img".into(), pages: 1 }).await.unwrap();
    write_frame(&mut s, &Frame::Offer { runs: vec![(0, 1)], hashes: vec![h] }).await.unwrap();
    assert!(matches!(read_frame(&mut s).await.unwrap(), Frame::Need { .. }));
    let mut corrupted = page.clone();
    corrupted[100] ^= 1;
    let packed = zstd::bulk::compress(&corrupted, 3).unwrap();
    write_frame(&mut s, &Frame::Pages { pages: vec![(0, h, packed.into())] }).await.unwrap();
    match read_frame(&mut s).await.unwrap() {
        Frame::Verified { ok: false, reason } => assert!(reason.contains("does not match its hash"), "{reason}"),
        other => panic!("{other:?}"),
    }
    let err = dest.await.unwrap().unwrap_err();
    assert!(matches!(err, TransferError::Integrity(_)), "{err}");
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0, "nothing kept");
}

fn options(shapers: Vec<&Shaper>) -> SendOptions<'_> {
    SendOptions { level: 3, shapers }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_guest_moves_in_rounds_and_pauses_only_for_the_last() {
    // 16 MiB of memory written at 4 MB/s while it moves.
    let images = generate(16 << 20, 0, &ContentMix::default(), 3, 4);
    let guest = SimGuest::start(images.memory, 4e6, 9);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("vm");
    let (addr, dest) = destination(dir.path(), None).await;
    let mut stream = connect(&addr).await;
    let precopy = PrecopyOptions { max_downtime_s: 0.3, budget_s: 60.0 };
    let report = migrate_guest(&mut stream, 7, SECRET, &guest, "memory.img", &options(vec![]), &precopy).await.unwrap();
    drop(stream);
    dest.await.unwrap().unwrap();
    assert!(guest.is_paused(), "paused for the last round, to be destroyed here");
    assert!(
        std::fs::read(out.join("memory.img")).unwrap() == guest.memory(),
        "the destination has the memory as paused"
    );
    assert!(report.downtime_s > 0.0);
    assert!(report.counters.raw_bytes > 16 << 20, "pages written meanwhile were sent again: {report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_that_outruns_its_cap_is_left_running_at_the_source() {
    // 4 MiB written at 40 MB/s, over a 4 MB/s cap: throttled round by round, it still
    // cannot converge within the budget.
    let images = generate(4 << 20, 0, &ContentMix::default(), 5, 6);
    let guest = SimGuest::start(images.memory, 40e6, 10);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("vm");
    let (addr, dest) = destination(dir.path(), None).await;
    let mut stream = connect(&addr).await;
    let cap = Shaper::new(Some(4e6));
    let precopy = PrecopyOptions { max_downtime_s: 0.05, budget_s: 4.0 };
    let err =
        migrate_guest(&mut stream, 7, SECRET, &guest, "memory.img", &options(vec![&cap]), &precopy).await.unwrap_err();
    assert!(matches!(err, PrecopyError::GaveUp { .. }), "{err}");
    assert!(!guest.is_paused(), "the guest runs on at the source");
    assert!(guest.throttled() < 1.0, "auto-converge throttled it first");
    assert!(dest.await.unwrap().unwrap_err().to_string().contains("gave up"));
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0, "the destination keeps nothing");
}

/// A proxy that cuts its first connection after `cut_after` bytes from the source, and forwards later ones whole.
async fn flaky_proxy(to: String, cut_after: u64) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let mut first = true;
        loop {
            let (client, _) = listener.accept().await.unwrap();
            let server = TcpStream::connect(&to).await.unwrap();
            let limit = if first { cut_after } else { u64::MAX };
            first = false;
            tokio::spawn(async move {
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                let up = async {
                    let mut limited = tokio::io::AsyncReadExt::take(&mut client_read, limit);
                    let _ = tokio::io::copy(&mut limited, &mut server_write).await;
                };
                let down = async {
                    let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
                };
                // Whichever side ends first ends the connection both ways.
                tokio::select! { _ = up => {}, _ = down => {} }
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_dropped_connection_resumes_without_resending_what_arrived() {
    let images = generate(8 << 20, 8 << 20, &ContentMix::default(), 21, 22);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("vm");
    std::fs::create_dir_all(&out).unwrap();
    // The destination takes two sessions: the first is cut, the second completes.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dest_addr = listener.local_addr().unwrap().to_string();
    let (index_dir, out_dir) = (dir.path().join("index"), out.clone());
    let dest = tokio::spawn(async move {
        let mut index = ChunkIndex::open(&index_dir, 1 << 30).unwrap();
        let mut outcomes = Vec::new();
        for _ in 0..2 {
            let (mut stream, _) = listener.accept().await.unwrap();
            outcomes.push(receive(&mut stream, |_| Some(SECRET.to_vec()), &mut index, &out_dir).await.is_ok());
        }
        outcomes
    });
    // Cut after about 6 MB: within the disk image, the memory image already kept.
    let proxy = flaky_proxy(dest_addr, 6_000_000).await;
    let options = SendOptions { level: 3, shapers: vec![] };
    let named = [("memory.img", images.memory.as_slice()), ("disk.img", images.disk.as_slice())];
    let connect = || {
        let proxy = proxy.clone();
        async move {
            let stream = TcpStream::connect(&proxy).await?;
            stream.set_nodelay(true)?;
            Ok(stream)
        }
    };
    let (retry, attempts) = send_resuming(connect, 7, SECRET, &named, &options, 3).await.unwrap();
    assert_eq!(attempts, 2);
    assert_eq!(dest.await.unwrap(), [false, true]);
    assert!(std::fs::read(out.join("memory.img")).unwrap() == images.memory);
    assert!(std::fs::read(out.join("disk.img")).unwrap() == images.disk);
    assert!(!out.join(".disk.img.resume").exists(), "the leftovers go once the image is whole");
    // The retry sent less than a whole cold transfer by the batches written before the cut
    // (a batch is kept once all its pages arrived: up to 4 MiB).
    let fresh = tempfile::tempdir().unwrap();
    let (addr, whole) = destination(fresh.path(), None).await;
    let cold = migrate(&addr, SECRET, &images.memory, &images.disk).await.unwrap();
    whole.await.unwrap().unwrap();
    assert!(retry.wire_bytes + 1_500_000 < cold.wire_bytes, "retry {retry:?}, whole {cold:?}");
    assert!(retry.held_pages > cold.held_pages);
}
