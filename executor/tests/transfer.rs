//! Executors' transfer stacks over real TCP on localhost, several streams
//! per job: cold and warm destinations, proactive disk caching, integrity,
//! authentication, TLS, resuming after a dropped connection, progress, and
//! live migration of a running `sim` VM.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use heliotrope_executor::content::{hash, zero_page_hash, Hash, ImageFile, PageSource, PAGE};
use heliotrope_executor::destination::{Allowed, Destination, Served, NOT_EXPECTED};
use heliotrope_executor::precopy::{migrate_vm, PrecopyError, PrecopyOptions};
use heliotrope_executor::replica::{keep_synced, Replica, Synced};
use heliotrope_executor::shaping::{Link, Shaper};
use heliotrope_executor::sim::{generate, ContentMix, SimImages, SimVm, Workload, BLOCK_PAGES};
use heliotrope_executor::source::{open_tunnel, send, send_resuming, SendOptions, Session};
use heliotrope_executor::tls::{self, Connection, Tls};
use heliotrope_executor::transfer::{Counters, Progress, TransferError, MAX_IMAGE_PAGES};
use heliotrope_executor::tunnel::{MIGRATION, MULTIFD};
use heliotrope_executor::wire::{
    encode, nonce, proof, read_frame, write_frame, write_with_payload, ByteBuf, Frame, ImageKind, VERSION,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const SECRET: &[u8] = b"job-secret-of-some-length";

/// What a replication session may send: replica `name`.
fn replica(name: &str) -> Vec<Allowed> {
    vec![Allowed { name: name.to_owned(), kind: ImageKind::Replica, max_pages: MAX_IMAGE_PAGES }]
}

/// A site's executor on a free port, serving every connection; what each connection came to arrives on `served`.
struct Site {
    dir: tempfile::TempDir,
    destination: Arc<Destination>,
    addr: String,
    served: mpsc::UnboundedReceiver<Result<Served, TransferError>>,
    tls: Option<Tls>,
}

async fn site(tls: Option<Tls>) -> Site {
    let dir = tempfile::tempdir().unwrap();
    let destination = Destination::open(dir.path(), 1 << 30).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (done, served) = mpsc::unbounded_channel();
    let (serving, accepting_tls) = (destination.clone(), tls.clone());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (destination, tls, done) = (serving.clone(), accepting_tls.clone(), done.clone());
            tokio::spawn(async move {
                let _ = done.send(destination.serve_tcp(tcp, tls.as_ref()).await);
            });
        }
    });
    Site { dir, destination, addr, served, tls }
}

impl Site {
    async fn streams(&self, n: usize) -> Vec<Box<dyn Connection>> {
        let mut streams = Vec::new();
        for _ in 0..n {
            streams.push(tls::connect(&self.addr, self.tls.as_ref()).await.unwrap());
        }
        streams
    }

    /// The outcomes of the next `n` connections to end.
    async fn outcomes(&mut self, n: usize) -> Vec<Result<Served, TransferError>> {
        let mut outcomes = Vec::new();
        for _ in 0..n {
            outcomes.push(self.served.recv().await.unwrap());
        }
        outcomes
    }

    fn kept(&self, job: u64) -> Vec<String> {
        let dir = self.dir.path().join(format!("vm-{job}"));
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .map(|entries| entries.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        names.sort();
        names
    }
}

fn vm(dir: &Path, memory_mib: usize, disk_mib: usize, seed: u64) -> SimImages {
    generate(dir, memory_mib << 20, disk_mib << 20, &ContentMix::default(), seed, seed + 1).unwrap()
}

/// The VM's images, disk first (its blocks then serve the memory's page cache).
fn images(vm: &SimImages) -> Vec<(String, Arc<dyn PageSource>)> {
    vec![
        ("disk.img".to_owned(), Arc::new(ImageFile::open(&vm.disk).unwrap())),
        ("memory.img".to_owned(), Arc::new(ImageFile::open(&vm.memory).unwrap())),
    ]
}

fn options() -> Arc<SendOptions> {
    Arc::new(SendOptions { level: 3, ..SendOptions::default() })
}

fn same_file(a: &Path, b: &Path) -> bool {
    std::fs::read(a).unwrap() == std::fs::read(b).unwrap()
}

/// Writes `blocks` of the disk as a guest would; returns the pages written.
fn write_blocks(disk: &Path, blocks: &[u64]) -> Vec<u64> {
    let file = std::fs::OpenOptions::new().write(true).open(disk).unwrap();
    let block = BLOCK_PAGES as usize * PAGE;
    for &b in blocks {
        file.write_all_at(&vec![b as u8 ^ 0xa5; block], b * block as u64).unwrap();
    }
    blocks.iter().flat_map(|b| b * BLOCK_PAGES..(b + 1) * BLOCK_PAGES).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_and_warm_destinations_end_with_identical_images() {
    let source = tempfile::tempdir().unwrap();
    let vm = vm(source.path(), 8, 16, 11);
    let raw = (8 + 16) << 20;

    let mut cold = site(None).await;
    cold.destination.expect(7, SECRET.to_vec());
    let counters = send(cold.streams(3).await, 7, SECRET, &images(&vm), options()).await.unwrap();
    assert!(cold.outcomes(3).await.iter().all(Result::is_ok));
    assert_eq!(cold.kept(7), ["disk.img", "memory.img"], "nothing partial left");
    assert!(same_file(&cold.destination.image_path(7, "memory.img"), &vm.memory));
    assert!(same_file(&cold.destination.image_path(7, "disk.img"), &vm.disk));
    assert_eq!(counters.raw_bytes, raw);
    // Zero pages are not sent, and the memory's page cache comes from the disk sent just before.
    assert!(counters.zero_pages > 0 && counters.index_pages > 0 && counters.cache_pages == 0, "{counters:?}");
    let cold_ratio = counters.wire_bytes as f64 / raw as f64;
    assert!(cold_ratio < 0.85, "cold wire ratio {cold_ratio}");

    // The warm site holds a replica of the disk, synced ahead of time; 2 blocks were written since.
    let warm = site(None).await;
    warm.destination.expect_images(8, SECRET.to_vec(), replica("vm-11-disk.img"));
    let mut replica = Replica::new("vm-11-disk.img");
    let disk: Arc<dyn PageSource> = Arc::new(ImageFile::open(&vm.disk).unwrap());
    let mut session = Session::open(warm.streams(2).await, 8, SECRET, options()).await.unwrap();
    replica.sync(&mut session, disk, &[]).await.unwrap();
    drop(session);
    assert!(same_file(&warm.destination.replica_path("vm-11-disk.img"), &vm.disk));
    write_blocks(&vm.disk, &[3, 40]);
    warm.destination.expect(9, SECRET.to_vec());
    let counters = send(warm.streams(3).await, 9, SECRET, &images(&vm), options()).await.unwrap();
    assert!(same_file(&warm.destination.image_path(9, "disk.img"), &vm.disk));
    assert!(same_file(&warm.destination.image_path(9, "memory.img"), &vm.memory));
    assert!(counters.cache_pages > 0, "{counters:?}");
    let warm_ratio = counters.wire_bytes as f64 / raw as f64;
    assert!(warm_ratio < 0.25, "warm wire ratio {warm_ratio}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_syncs_only_what_was_written_and_recovers_from_a_lost_copy() {
    let source = tempfile::tempdir().unwrap();
    let vm = vm(source.path(), 1, 16, 31);
    let standby = site(None).await;
    standby.destination.expect_images(3, SECRET.to_vec(), replica("vm-31-disk.img"));
    let disk: Arc<dyn PageSource> = Arc::new(ImageFile::open(&vm.disk).unwrap());
    let mut replica = Replica::new("vm-31-disk.img");
    let at = standby.destination.replica_path("vm-31-disk.img");
    async fn sync(
        standby: &Site,
        disk: &Arc<dyn PageSource>,
        replica: &mut Replica,
        written: Vec<u64>,
    ) -> Result<Counters, TransferError> {
        let mut session = Session::open(standby.streams(2).await, 3, SECRET, options()).await?;
        replica.sync(&mut session, disk.clone(), &written).await?;
        Ok(session.progress().counters)
    }
    let first = sync(&standby, &disk, &mut replica, Vec::new()).await.unwrap();
    assert!(replica.is_synced() && same_file(&at, &vm.disk));
    let written = write_blocks(&vm.disk, &[1, 2, 100]);
    let delta = sync(&standby, &disk, &mut replica, written.clone()).await.unwrap();
    assert!(same_file(&at, &vm.disk), "the replica follows the disk");
    assert_eq!(delta.raw_bytes, (written.len() * PAGE) as u64, "only the written blocks are offered");
    assert!(delta.wire_bytes * 20 < first.wire_bytes, "delta {delta:?}, first {first:?}");

    // The standby lost its copy: the delta no longer adds up, and the next sync starts over.
    std::fs::remove_file(&at).unwrap();
    let written = write_blocks(&vm.disk, &[5]);
    let err = sync(&standby, &disk, &mut replica, written).await.unwrap_err();
    assert!(matches!(err, TransferError::Integrity(_)), "{err}");
    assert!(!replica.is_synced());
    sync(&standby, &disk, &mut replica, Vec::new()).await.unwrap();
    assert!(same_file(&at, &vm.disk));
}

/// Waits until `synced` counts at least `n` syncs.
async fn synced_at_least(synced: &mut tokio::sync::watch::Receiver<Synced>, n: u64) {
    let waited = tokio::time::timeout(Duration::from_secs(30), synced.wait_for(|s| s.count >= n)).await;
    let reached = waited.is_ok_and(|r| r.is_ok());
    assert!(reached, "{} syncs, not {n}", synced.borrow().count);
}

/// Waits until a sender has been held at rate zero `n` times by `shaper`; returns how many times.
async fn held_at_least(shaper: &Shaper, n: u64) -> u64 {
    let waited = tokio::time::timeout(Duration::from_secs(30), async {
        while shaper.times_held() < n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "held {} times, not {n}", shaper.times_held());
    shaper.times_held()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_vm_is_replicated_in_the_background_and_yields_to_migrations() {
    let source = tempfile::tempdir().unwrap();
    let images = vm(source.path(), 1, 16, 51);
    let vm =
        SimVm::start(images.clone(), Workload { memory_bytes_per_s: 0.0, disk_bytes_per_s: 2e6, seed: 52 }).unwrap();
    let standby = Arc::new(site(None).await);
    standby.destination.expect_images(5, SECRET.to_vec(), replica("vm-51-disk.img"));
    let link = Link::new(50e6, 20e6);
    let (opener, shapers) = (standby.clone(), link.replication_shapers());
    let open = move || {
        let (standby, shapers) = (opener.clone(), shapers.clone());
        async move {
            let options = Arc::new(SendOptions { level: 1, shapers, progress: None });
            Session::open(standby.streams(2).await, 5, SECRET, options).await
        }
    };
    let mut replicating = keep_synced(&vm, "vm-51-disk.img", open, Duration::from_millis(100)).unwrap();
    synced_at_least(&mut replicating.synced, 3).await;

    // A migration takes the whole link: replication waits for it. Once a
    // sync is held at rate zero, none gets through while it looks again and
    // again (each held stream every 20 ms: 100 looks take a second or more).
    let migration = link.start_migration(50e6);
    let replication = &link.replication_shapers()[0];
    let held_since = held_at_least(replication, 1).await;
    let before = replicating.synced.borrow().count;
    held_at_least(replication, held_since + 100).await;
    assert_eq!(replicating.synced.borrow().count, before, "no sync gets through while migrations take the link");
    drop(migration);
    synced_at_least(&mut replicating.synced, before + 2).await;

    // Once the guest stops writing, the next syncs leave the replica equal to the disk.
    vm.pause();
    let now = replicating.synced.borrow().count;
    synced_at_least(&mut replicating.synced, now + 2).await;
    assert!(same_file(&standby.destination.replica_path("vm-51-disk.img"), &images.disk));
}

/// Opens a connection and proves the job's secret by hand.
async fn by_hand(addr: &str, job: u64) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mine = nonce();
    write_frame(&mut s, &Frame::Hello { version: VERSION, job, stream: 0, streams: 1, nonce: mine }).await.unwrap();
    let Frame::Challenge { nonce: theirs, .. } = read_frame(&mut s).await.unwrap() else { panic!("no challenge") };
    write_frame(&mut s, &Frame::Proof { proof: proof(SECRET, "source", job, &theirs, &mine) }).await.unwrap();
    assert_eq!(read_frame(&mut s).await.unwrap(), Frame::Accepted);
    s
}

#[tokio::test]
async fn a_wrong_secret_is_refused_and_nothing_is_kept() {
    let source = tempfile::tempdir().unwrap();
    let vm = vm(source.path(), 1, 1, 1);
    let mut dest = site(None).await;
    dest.destination.expect(7, SECRET.to_vec());
    // The source checks the destination's proof first, sees it was made with another secret, and stops.
    let err = send(dest.streams(2).await, 7, b"guessed", &images(&vm), options()).await.unwrap_err();
    assert!(err.to_string().contains("does not hold this job's secret"), "{err}");

    // A source that ignores the challenge and answers with a made-up proof is refused.
    let mut s = TcpStream::connect(&dest.addr).await.unwrap();
    write_frame(&mut s, &Frame::Hello { version: VERSION, job: 7, stream: 0, streams: 1, nonce: nonce() })
        .await
        .unwrap();
    assert!(matches!(read_frame(&mut s).await.unwrap(), Frame::Challenge { .. }));
    write_frame(&mut s, &Frame::Proof { proof: [0; 32] }).await.unwrap();
    assert_eq!(read_frame(&mut s).await.unwrap(), Frame::Refused { reason: NOT_EXPECTED.into() });
    // An unknown job is challenged as a known one is, and refused in the same words: before
    // proving a secret a peer learns nothing of which jobs are expected.
    let mut s = TcpStream::connect(&dest.addr).await.unwrap();
    write_frame(&mut s, &Frame::Hello { version: VERSION, job: 8, stream: 0, streams: 1, nonce: nonce() })
        .await
        .unwrap();
    assert!(matches!(read_frame(&mut s).await.unwrap(), Frame::Challenge { .. }));
    write_frame(&mut s, &Frame::Proof { proof: [0; 32] }).await.unwrap();
    assert_eq!(read_frame(&mut s).await.unwrap(), Frame::Refused { reason: NOT_EXPECTED.into() });
    // So is a protocol version from elsewhere, and a stream outside its session.
    for (version, job, stream, expected) in [(VERSION + 1, 7, 0, "protocol version"), (VERSION, 7, 4, "stream 4 of 4")]
    {
        let mut s = TcpStream::connect(&dest.addr).await.unwrap();
        write_frame(&mut s, &Frame::Hello { version, job, stream, streams: 4, nonce: nonce() }).await.unwrap();
        assert!(matches!(read_frame(&mut s).await.unwrap(), Frame::Refused { reason } if reason.contains(expected)));
    }
    let outcomes = dest.outcomes(6).await;
    assert!(outcomes.iter().all(|o| matches!(o, Err(TransferError::Refused(_)) | Err(TransferError::Wire(_)))));
    assert!(dest.kept(7).is_empty());
}

/// Speaks the protocol by hand as a faulty source that sends one page whose bytes do not match its hash.
#[tokio::test]
async fn a_corrupted_page_is_caught_and_the_image_not_kept() {
    let mut dest = site(None).await;
    dest.destination.expect(7, SECRET.to_vec());
    let mut s = by_hand(&dest.addr, 7).await;
    let page = vec![42u8; PAGE];
    let h: Hash = hash(&page);
    let image = Frame::Image { name: "memory.img".into(), kind: ImageKind::Migration, pages: 2, first: 0, count: 2 };
    write_frame(&mut s, &image).await.unwrap();
    write_frame(&mut s, &Frame::Offer { runs: vec![(0, 2)], hashes: vec![zero_page_hash(), h] }).await.unwrap();
    match read_frame(&mut s).await.unwrap() {
        Frame::Need { origins } => assert_eq!(origins, ByteBuf::from(vec![1, 0]), "zero, then sent"),
        other => panic!("{other:?}"),
    }
    let mut corrupted = page.clone();
    corrupted[100] ^= 1;
    let header = encode(&Frame::Pages { compressed: false, len: PAGE as u32 }).unwrap();
    write_with_payload(&mut s, &header, &[&corrupted]).await.unwrap();
    match read_frame(&mut s).await.unwrap() {
        Frame::Verified { ok: false, reason } => assert!(reason.contains("does not match its hash"), "{reason}"),
        other => panic!("{other:?}"),
    }
    let err = dest.outcomes(1).await.remove(0).unwrap_err();
    assert!(matches!(err, TransferError::Integrity(_)), "{err}");
    assert!(dest.kept(7).is_empty(), "nothing kept, not even the partial image");

    // A seal before every part was verified is refused too.
    let mut s = by_hand(&dest.addr, 7).await;
    let image = Frame::Image { name: "disk.img".into(), kind: ImageKind::Migration, pages: 4, first: 0, count: 2 };
    write_frame(&mut s, &image).await.unwrap();
    write_frame(&mut s, &Frame::End { digest: heliotrope_executor::content::image_digest(&[zero_page_hash(); 2]) })
        .await
        .unwrap();
    assert!(matches!(read_frame(&mut s).await.unwrap(), Frame::Verified { ok: true, .. }));
    write_frame(&mut s, &Frame::Seal { name: "disk.img".into(), digest: [0; 32] }).await.unwrap();
    match read_frame(&mut s).await.unwrap() {
        Frame::Verified { ok: false, reason } => assert!(reason.contains("parts are missing"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert!(dest.kept(7).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_vm_moves_in_rounds_and_pauses_only_for_the_last() {
    let source = tempfile::tempdir().unwrap();
    let images = vm(source.path(), 16, 16, 3);
    // Memory written at 4 MB/s and disk at 1 MB/s while it moves.
    let workload = Workload { memory_bytes_per_s: 4e6, disk_bytes_per_s: 1e6, seed: 9 };
    let vm = Arc::new(SimVm::start(images.clone(), workload).unwrap());
    let dest = site(None).await;
    dest.destination.expect(7, SECRET.to_vec());
    let (watch, progress) = tokio::sync::watch::channel(Progress::default());
    let memory_options = Arc::new(SendOptions { level: 3, progress: Some(watch), ..SendOptions::default() });
    let mut memory = Session::open(dest.streams(2).await, 7, SECRET, memory_options).await.unwrap();
    let mut disk = Session::open(dest.streams(2).await, 7, SECRET, options()).await.unwrap();
    let precopy = PrecopyOptions { max_downtime_s: 0.3, budget_s: 60.0 };
    let report = migrate_vm(&mut memory, Some(&mut disk), &vm, &precopy).await.unwrap();
    assert!(vm.is_paused(), "paused for the last round, to be destroyed here");
    let kept = |name: &str| std::fs::read(dest.destination.image_path(7, name)).unwrap();
    assert!(kept("memory.img") == vm.memory(), "the destination has the memory as paused");
    assert!(kept("disk.img") == std::fs::read(&images.disk).unwrap(), "and the disk as paused");
    assert!(report.downtime_s > 0.0);
    assert!(report.memory.raw_bytes > 16 << 20, "pages written meanwhile were sent again: {report:?}");
    // Progress was reported as it went, and ends where the counters do.
    let last = *progress.borrow();
    assert_eq!(last.counters, report.memory);
    assert_eq!(last.planned_bytes, last.counters.raw_bytes);
    assert!(last.expected_downtime_s.is_some_and(|s| s <= 0.3) && last.eta_s == Some(0.0), "{last:?}");
    Arc::into_inner(vm).unwrap().destroy().unwrap();
    assert!(!images.memory.exists() && !images.disk.exists(), "gone from the source once moved");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_that_outruns_its_cap_is_left_running_at_the_source() {
    // 4 MiB written at 40 MB/s, over a 4 MB/s cap: throttled round by round, it still
    // cannot converge within the budget.
    let source = tempfile::tempdir().unwrap();
    let images = vm(source.path(), 4, 0, 5);
    let workload = Workload { memory_bytes_per_s: 40e6, disk_bytes_per_s: 0.0, seed: 10 };
    let vm = Arc::new(SimVm::start(images, workload).unwrap());
    let mut dest = site(None).await;
    dest.destination.expect(7, SECRET.to_vec());
    let capped =
        Arc::new(SendOptions { level: 3, shapers: vec![Arc::new(Shaper::new(Some(4e6)))], ..SendOptions::default() });
    let mut memory = Session::open(dest.streams(2).await, 7, SECRET, capped).await.unwrap();
    let precopy = PrecopyOptions { max_downtime_s: 0.05, budget_s: 4.0 };
    let err = migrate_vm(&mut memory, None, &vm, &precopy).await.unwrap_err();
    assert!(matches!(err, PrecopyError::GaveUp { .. }), "{err}");
    assert!(!vm.is_paused(), "the guest runs on at the source");
    assert!(vm.throttled() < 1.0, "auto-converge throttled it first");
    drop(memory);
    let outcomes = dest.outcomes(2).await;
    assert!(outcomes.iter().any(|o| o.as_ref().is_err_and(|e| e.to_string().contains("gave up"))));
    assert!(dest.kept(7).is_empty(), "the destination keeps nothing");
}

/// A connection that panics on its first write once `vm` is paused: a bug in the last round.
struct PanicsWhenPaused {
    inner: Box<dyn Connection>,
    vm: Arc<SimVm>,
}

impl tokio::io::AsyncRead for PanicsWhenPaused {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for PanicsWhenPaused {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        assert!(!self.vm.is_paused(), "a bug while the guest is paused");
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_the_last_round_leaves_the_guest_running_at_the_source() {
    let source = tempfile::tempdir().unwrap();
    let images = vm(source.path(), 4, 0, 11);
    let workload = Workload { memory_bytes_per_s: 1e6, disk_bytes_per_s: 0.0, seed: 12 };
    let vm = Arc::new(SimVm::start(images, workload).unwrap());
    let dest = site(None).await;
    dest.destination.expect(7, SECRET.to_vec());
    let streams: Vec<Box<dyn Connection>> = dest
        .streams(2)
        .await
        .into_iter()
        .map(|inner| Box::new(PanicsWhenPaused { inner, vm: vm.clone() }) as Box<dyn Connection>)
        .collect();
    let moving = vm.clone();
    let migrating = tokio::spawn(async move {
        let mut memory = Session::open(streams, 7, SECRET, options()).await.unwrap();
        let precopy = PrecopyOptions { max_downtime_s: 0.3, budget_s: 60.0 };
        migrate_vm(&mut memory, None, &moving, &precopy).await
    });
    let failed = migrating.await.expect_err("the last round panicked");
    assert!(failed.is_panic());
    assert!(!vm.is_paused(), "the panic unwound through the pause: the guest runs on");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_resumes_without_resending_what_arrived() {
    let source = tempfile::tempdir().unwrap();
    let vm = vm(source.path(), 8, 8, 21);
    let dest = site(None).await;
    dest.destination.expect(7, SECRET.to_vec());
    // The first stream of the first session is cut after about 5 MB: well into its part of the disk.
    let proxy = flaky_proxy(dest.addr.clone(), 5_000_000).await;
    let connect = || tls::connect(&proxy, None);
    let (retry, attempts) = send_resuming(connect, 2, 7, SECRET, &images(&vm), options(), 3).await.unwrap();
    assert_eq!(attempts, 2);
    assert!(same_file(&dest.destination.image_path(7, "memory.img"), &vm.memory));
    assert!(same_file(&dest.destination.image_path(7, "disk.img"), &vm.disk));
    assert_eq!(dest.kept(7), ["disk.img", "memory.img"], "the leftovers go once the image is whole");
    // The retry sent less than a whole cold transfer by what arrived before the cut.
    let fresh = site(None).await;
    fresh.destination.expect(7, SECRET.to_vec());
    let cold = send(fresh.streams(2).await, 7, SECRET, &images(&vm), options()).await.unwrap();
    assert!(retry.in_place_pages > 0, "{retry:?}");
    assert!(retry.wire_bytes + 2_000_000 < cold.wire_bytes, "retry {retry:?}, whole {cold:?}");
}

/// A CA and a certificate it signed for this host, as PEM files in `dir`; returns the TLS files.
fn certificates(dir: &Path, ca_name: &str) -> Tls {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.distinguished_name.push(rcgen::DnType::CommonName, ca_name);
    let ca = params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    let (cert_path, key_path, ca_path) = (dir.join("cert.pem"), dir.join("key.pem"), dir.join("ca.pem"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    std::fs::write(&ca_path, ca.pem()).unwrap();
    Tls::load(&cert_path, &key_path, &ca_path).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executors_speak_mutual_tls_when_certificates_are_configured() {
    let certs = tempfile::tempdir().unwrap();
    let fleet = certificates(certs.path(), "fleet CA");
    let source = tempfile::tempdir().unwrap();
    let vm = vm(source.path(), 2, 2, 41);
    let dest = site(Some(fleet.clone())).await;
    dest.destination.expect(7, SECRET.to_vec());
    let counters = send(dest.streams(2).await, 7, SECRET, &images(&vm), options()).await.unwrap();
    assert_eq!(counters.raw_bytes, 4 << 20);
    assert!(same_file(&dest.destination.image_path(7, "disk.img"), &vm.disk));

    // An executor whose certificate another CA signed gets no connection; nor does plain TCP.
    let other = tempfile::tempdir().unwrap();
    let stranger = certificates(other.path(), "another CA");
    let refused = match tls::connect(&dest.addr, Some(&stranger)).await {
        Err(_) => true,
        Ok(mut s) => read_frame(&mut s).await.is_err(),
    };
    assert!(refused, "a stranger's certificate is refused");
    let mut plain = TcpStream::connect(&dest.addr).await.unwrap();
    let hello = Frame::Hello { version: VERSION, job: 7, stream: 0, streams: 1, nonce: nonce() };
    let _ = write_frame(&mut plain, &hello).await;
    assert!(read_frame(&mut plain).await.is_err(), "plain TCP gets nothing from a TLS executor");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_has_not_proven_the_secret_cannot_announce_a_large_frame_or_write_a_replica() {
    use tokio::io::AsyncWriteExt;
    let mut standby = site(None).await;
    // A hello announcing 60 MiB is refused at its length, before a byte of it is held.
    let mut tcp = TcpStream::connect(&standby.addr).await.unwrap();
    tcp.write_all(&(60u32 << 20).to_be_bytes()).await.unwrap();
    tcp.write_all(&[0u8; 1024]).await.unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(5), standby.outcomes(1)).await.expect("refused at once");
    assert!(matches!(&outcome[0], Err(e) if e.to_string().contains("larger than the 4096 allowed")), "{outcome:?}");

    // A migration's job may not write a replica, nor a replication session another VM's replica.
    standby.destination.expect(7, SECRET.to_vec());
    standby.destination.expect_images(8, SECRET.to_vec(), replica("vm-1-disk.img"));
    let disk: Arc<dyn PageSource> = Arc::new(ImageFile::open(&vm(standby.dir.path(), 1, 1, 3).disk).unwrap());
    for (job, name) in [(7, "vm-1-disk.img"), (8, "vm-2-disk.img")] {
        let mut session = Session::open(standby.streams(1).await, job, SECRET, options()).await.unwrap();
        let written = Replica::new(name).sync(&mut session, disk.clone(), &[]).await;
        assert!(written.is_err(), "job {job} wrote replica {name}");
        assert!(!standby.destination.replica_path(name).exists());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_sends_only_the_images_it_was_assigned_no_larger_than_its_vm() {
    let source = tempfile::tempdir().unwrap();
    let vm = vm(source.path(), 1, 2, 5);
    let mut dest = site(None).await;
    let image = |name: &str, max_pages| Allowed { name: name.into(), kind: ImageKind::Migration, max_pages };
    // The VM was assigned 1 MiB of memory and 1 MiB of disk: its 2 MiB disk is refused.
    dest.destination.expect_images(9, SECRET.to_vec(), vec![image("memory.img", 256), image("disk.img", 256)]);
    assert!(send(dest.streams(1).await, 9, SECRET, &images(&vm), options()).await.is_err());
    let refused = dest.outcomes(1).await;
    assert!(
        matches!(&refused[0], Err(e) if e.to_string().contains("512 pages: job 9 sends 256 at most")),
        "{refused:?}"
    );
    // A job whose bytes all go through tunnels takes no image at all, and no replica.
    dest.destination.expect_images(10, SECRET.to_vec(), Vec::new());
    assert!(send(dest.streams(1).await, 10, SECRET, &images(&vm), options()).await.is_err());
    let refused = dest.outcomes(1).await;
    assert!(matches!(&refused[0], Err(e) if e.to_string().contains("sends no Migration image")), "{refused:?}");
    assert!(dest.kept(9).is_empty() && dest.kept(10).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jobs_multifd_channels_reach_qemu_only_after_its_main_channel() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // QEMU 7.2 takes the first connection to its incoming socket as the main channel.
    let site = site(None).await;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("migration.sock");
    let qemu = tokio::net::UnixListener::bind(&socket).unwrap();
    let (job, secret) = (5, vec![3u8; 32]);
    site.destination.expect(job, secret.clone());
    site.destination.expect_memory(job, &socket, None);
    let open = |end: &'static str| {
        let (address, secret) = (site.addr.clone(), secret.clone());
        tokio::spawn(async move {
            let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
            open_tunnel(&mut stream, job, &secret, end).await.unwrap();
            if end == MULTIFD {
                // A multifd tunnel carries frames: these bytes pass on as they are.
                let frame = encode(&Frame::Relay { len: end.len() as u32 }).unwrap();
                write_with_payload(&mut stream, &frame, &[end.as_bytes()]).await.unwrap();
            } else {
                stream.write_all(end.as_bytes()).await.unwrap();
            }
            stream
        })
    };
    let multifd = open(MULTIFD);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let main = open(MIGRATION);
    let mut first = vec![0u8; MIGRATION.len()];
    let (mut accepted, _) = qemu.accept().await.unwrap();
    accepted.read_exact(&mut first).await.unwrap();
    assert_eq!(first, MIGRATION.as_bytes(), "the main channel reached QEMU first");
    let (mut second, _) = qemu.accept().await.unwrap();
    let mut then = vec![0u8; MULTIFD.len()];
    second.read_exact(&mut then).await.unwrap();
    assert_eq!(then, MULTIFD.as_bytes());
    drop((main.await.unwrap(), multifd.await.unwrap()));
}

#[test]
fn keeping_a_memory_image_leaves_those_still_written_and_drops_what_the_index_dropped() {
    let dir = tempfile::tempdir().unwrap();
    // Room in the index for one image of a page at a time.
    let site = Destination::open(dir.path(), PAGE as u64).unwrap();
    let page = |fill: u8| vec![fill; PAGE];
    let (first, writing) = (site.new_ram_image("a", 1).unwrap(), site.new_ram_image("b", 2).unwrap());
    first.write("pc.ram", &[0], &page(1));
    site.keep_ram_image(&first).unwrap();
    // Another VM's image, still being written, and the next one of VM a: keeping that one drops
    // the first (the budget), and leaves the one being written.
    writing.write("pc.ram", &[0], &page(2));
    let next = site.new_ram_image("a", 3).unwrap();
    next.write("pc.ram", &[0], &page(3));
    site.keep_ram_image(&next).unwrap();
    assert!(!first.dir().exists(), "VM a's earlier image went");
    assert!(writing.dir().join("pc.ram.ram").exists(), "an image being written stays");
    let third = site.new_ram_image("c", 4).unwrap();
    third.write("pc.ram", &[0], &page(4));
    site.keep_ram_image(&third).unwrap();
    assert!(!next.dir().exists(), "an image the budget dropped is deleted");
    site.drop_ram_image(&writing);
    assert!(!writing.dir().exists());
}
