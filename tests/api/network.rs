//! Network continuity measured in network namespaces: a client, two site
//! routers joined by a WAN link, and a VM whose NIC plugs into a site's VM
//! bridge. The `linux` driver moves the VM's addresses from site A to site
//! B the way an executor does at the cutover, while a TCP connection and a
//! stream of UDP probes (one per millisecond) run from the client to the
//! VM. The VM's own state (its sockets) lives in its namespace, as a
//! migrated guest's does in its memory: what is tested is the network.
//!
//! ```text
//! client 10.0.1.2 ── 10.0.1.1 site A 10.0.12.1 ── 10.0.12.2 site B
//!                          br-vms                       br-vms
//!                             └──── VM 10.200.0.10 ─ ─ ─ ┘ (after the move)
//! ```
//!
//! Both sites' VM bridges carry the same gateway (169.254.0.1, one MAC),
//! as datacenter fabrics' anycast gateways do, so the guest needs nothing.
//!
//! The first test drives the driver in-process, step by step as the
//! executors do, and measures the interruption; the second runs the real
//! loop: a scheduler, and an executor in each site's namespace (reached
//! over a management network) that moves a `sim` VM and, at its cutover,
//! the network.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use heliotrope::db::MIGRATOR;
use heliotrope::startup::Services;
use heliotrope_api_spec::Role;
use heliotrope_executor::network::linux::{Linux, LinuxOptions};
use heliotrope_executor::network::{timed, Network, NetworkMove};
use heliotrope_tests::{link, prerequisite, spawn_on, wait_until, with, workspace_binary, Processes, TestApp};
use nix::sched::{setns, CloneFlags};
use rtnetlink::LinkUnspec;
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::plans::{big_vm, flat_signals, site_at};

const VM_V4: &str = "10.200.0.10";
const VM_V6: &str = "fd00:200::10";

/// A named network namespace, deleted when dropped.
struct Netns(String);

impl Netns {
    fn add(role: &str) -> Result<Netns, String> {
        let name = format!("hvt{}-{role}", std::process::id());
        let out = Command::new("ip").args(["netns", "add", &name]).output().map_err(|e| format!("running ip: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
        }
        let ns = Netns(name);
        ns.ip("link set lo up");
        Ok(ns)
    }

    /// `ip -n <this> <args>`; panics if it fails (the topology is the test's own).
    fn ip(&self, args: &str) {
        let out = Command::new("ip").args(["-n", &self.0]).args(args.split_whitespace()).output().expect("ip runs");
        assert!(out.status.success(), "ip -n {} {args}: {}", self.0, String::from_utf8_lossy(&out.stderr));
    }

    /// `ip <args>` in the test's own namespace.
    fn host_ip(args: &str) -> Result<(), String> {
        let out = Command::new("ip").args(args.split_whitespace()).output().map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("ip {args}: {}", String::from_utf8_lossy(&out.stderr).trim()))
        }
    }

    fn ip_output(&self, args: &str) -> String {
        let out = Command::new("ip").args(["-n", &self.0]).args(args.split_whitespace()).output().expect("ip runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Sets `key` (`net/ipv4/...`) in this namespace: `/proc/sys/net` is the opening thread's namespace's.
    fn sysctl(&self, key: &'static str, value: &'static str) {
        let written = self.run(move || std::fs::write(format!("/proc/sys/{key}"), value));
        written.unwrap_or_else(|e| panic!("{key}: {e}"));
    }

    fn file(&self) -> File {
        File::open(format!("/run/netns/{}", self.0)).expect("the namespace's file")
    }

    /// Runs `f` on a thread inside this namespace: the sockets it makes live there.
    fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let file = self.file();
        std::thread::spawn(move || {
            setns(&file, CloneFlags::CLONE_NEWNET).expect("entering the namespace");
            f()
        })
        .join()
        .expect("the thread in the namespace")
    }

    /// A netlink handle into this namespace, its connection on the current runtime.
    fn netlink(&self) -> rtnetlink::Handle {
        let runtime = tokio::runtime::Handle::current();
        self.run(move || {
            let _entered = runtime.enter();
            let (connection, handle, _) = rtnetlink::new_connection().expect("a netlink socket");
            tokio::spawn(connection);
            handle
        })
    }

    /// The `linux` network driver as this site's executor runs it.
    fn driver(&self, local: &str) -> Network {
        let runtime = tokio::runtime::Handle::current();
        let options = LinuxOptions {
            vm_link: "br-vms".into(),
            local: Some(local.parse().expect("an address")),
            vxlan_port: 4789,
        };
        Network::Linux(self.run(move || {
            let _entered = runtime.enter();
            Linux::connect(options).expect("the linux driver")
        }))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

struct Topology {
    client: Netns,
    a: Netns,
    b: Netns,
    vm: Netns,
}

fn topology() -> Result<Topology, String> {
    let t = Topology { client: Netns::add("c")?, a: Netns::add("a")?, b: Netns::add("b")?, vm: Netns::add("v")? };
    let (a, b) = (&t.a.0, &t.b.0);
    t.client.ip(&format!("link add c0 type veth peer name a-c netns {a}"));
    t.a.ip(&format!("link add a-w type veth peer name b-w netns {b}"));
    t.vm.ip(&format!("link add eth0 type veth peer name vport netns {a}"));
    t.client.ip("addr add 10.0.1.2/24 dev c0");
    t.client.ip("link set c0 up");
    t.client.ip("route add default via 10.0.1.1");
    t.a.ip("addr add 10.0.1.1/24 dev a-c");
    t.a.ip("link set a-c up");
    t.a.ip("addr add 10.0.12.1/24 dev a-w");
    t.a.ip("link set a-w up");
    t.b.ip("addr add 10.0.12.2/24 dev b-w");
    t.b.ip("link set b-w up");
    t.b.ip("route add 10.0.1.0/24 via 10.0.12.1");
    for site in [&t.a, &t.b] {
        site.sysctl("net/ipv4/ip_forward", "1");
        // As most distributions set it.
        site.sysctl("net/ipv4/conf/all/rp_filter", "2");
        site.ip("link add br-vms type bridge");
        site.ip("link set br-vms address 02:00:5e:00:01:01 up");
        site.ip("addr add 169.254.0.1/32 dev br-vms");
    }
    t.a.ip("link set vport master br-vms up");
    t.a.ip(&format!("route add {VM_V4}/32 dev br-vms"));
    t.vm.ip(&format!("addr add {VM_V4}/32 dev eth0"));
    t.vm.ip(&format!("addr add {VM_V6}/128 dev eth0 nodad"));
    t.vm.ip("link set eth0 up");
    t.vm.ip("route add 169.254.0.1 dev eth0 scope link");
    t.vm.ip("route add default via 169.254.0.1");
    Ok(t)
}

impl Topology {
    /// The VM serves (UDP and TCP echo); the client probes it once a millisecond.
    fn serve_and_probe(&self) -> Probes {
        let (udp, tcp) = self
            .vm
            .run(|| (UdpSocket::bind("0.0.0.0:7000").expect("udp"), TcpListener::bind("0.0.0.0:7001").expect("tcp")));
        serve_vm(udp, tcp);
        Probes::start(self.client.run(|| {
            let probe = UdpSocket::bind("0.0.0.0:0").expect("udp");
            probe.connect((VM_V4, 7000)).expect("the probe's peer");
            probe
        }))
    }

    /// Waits until `probes` have had `more` answers beyond `since` (at most 10 s).
    async fn answered_again(probes: &Probes, since: usize, more: usize, what: &str) {
        let answered = async || probes.answered();
        let waited = wait_until(Duration::from_secs(10), Duration::from_millis(20), answered, |&n| n >= since + more);
        assert!(waited.await.is_ok(), "{what}");
    }
}

/// The move of the tests' VM from A to B (the migration id names the tunnel), as
/// the site with tunnel endpoint `here` sees it (the other end is its peer).
fn web_1(here: &str) -> NetworkMove {
    let peer = if here == "10.0.12.1" { "10.0.12.2" } else { "10.0.12.1" };
    NetworkMove {
        migration: 4242,
        recovery: None,
        vm: "web-1".into(),
        addresses: vec![VM_V4.parse().unwrap(), VM_V6.parse().unwrap()],
        from_site: "a".into(),
        to_site: "b".into(),
        peer: Some(peer.parse().unwrap()),
        tunnel_key: heliotrope_executor::network::tunnel_key("a job's secret"),
    }
}

/// Where the scheduler listens on the management network.
const SCHEDULER_HOST: &str = "10.99.1.1";

impl Topology {
    /// The sites' management network: a veth from each site to the test's
    /// own namespace, where the scheduler listens at `SCHEDULER_HOST`
    /// (site B reaches it through its own veth: the host answers for all its addresses).
    fn management(&self) -> Result<(), String> {
        for (site, n) in [(&self.a, 1), (&self.b, 2)] {
            let host_end = format!("hvt{}m{n}", std::process::id());
            Netns::host_ip(&format!("link add {host_end} type veth peer name mgmt netns {}", site.0))?;
            Netns::host_ip(&format!("addr add 10.99.{n}.1/30 dev {host_end}"))?;
            Netns::host_ip(&format!("link set {host_end} up"))?;
            site.ip(&format!("addr add 10.99.{n}.2/30 dev mgmt"));
            site.ip("link set mgmt up");
        }
        self.b.ip(&format!("route add {SCHEDULER_HOST}/32 via 10.99.2.1"));
        Ok(())
    }
}

/// The topology, or `None` (saying why the test skips; under CI it fails) where network namespaces cannot be made.
fn or_skip(topology: Result<Topology, String>) -> Option<Topology> {
    prerequisite("network namespaces cannot be created here", topology)
}

/// Probes sent once a millisecond, and when each came back.
struct Probes {
    stop: Arc<AtomicBool>,
    sent: Arc<Mutex<Vec<Instant>>>,
    answered: Arc<Mutex<Vec<(u32, Instant)>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Probes {
    fn start(socket: UdpSocket) -> Probes {
        let stop = Arc::new(AtomicBool::new(false));
        let sent: Arc<Mutex<Vec<Instant>>> = Arc::default();
        let answered: Arc<Mutex<Vec<(u32, Instant)>>> = Arc::default();
        socket.set_read_timeout(Some(Duration::from_millis(20))).expect("a read timeout");
        let receiver = socket.try_clone().expect("the socket again");
        let sending = {
            let (stop, sent) = (Arc::clone(&stop), Arc::clone(&sent));
            std::thread::spawn(move || {
                let (start, mut seq) = (Instant::now(), 0u32);
                while !stop.load(Ordering::Relaxed) {
                    let _ = socket.send(&seq.to_be_bytes());
                    sent.lock().unwrap().push(Instant::now());
                    seq += 1;
                    let next = start + Duration::from_millis(u64::from(seq));
                    std::thread::sleep(next.saturating_duration_since(Instant::now()));
                }
            })
        };
        let receiving = {
            let (stop, answered) = (Arc::clone(&stop), Arc::clone(&answered));
            std::thread::spawn(move || {
                let mut buf = [0u8; 16];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(4) = receiver.recv(&mut buf) {
                        let seq = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
                        answered.lock().unwrap().push((seq, Instant::now()));
                    }
                }
            })
        };
        Probes { stop, sent, answered, threads: vec![sending, receiving] }
    }

    fn answered(&self) -> usize {
        self.answered.lock().unwrap().len()
    }

    fn sent(&self) -> usize {
        self.sent.lock().unwrap().len()
    }

    /// Probes sent and answered, and the longest time without an answer
    /// beyond the probes' own interval (the interruption).
    fn finish(self) -> (usize, usize, Duration) {
        std::thread::sleep(Duration::from_millis(100));
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads {
            thread.join().expect("a probe thread");
        }
        let sent = self.sent.lock().unwrap().clone();
        let mut answered = self.answered.lock().unwrap().clone();
        answered.sort_by_key(|&(seq, _)| seq);
        answered.dedup_by_key(|&mut (seq, _)| seq);
        // The last 100 ms of probes may be in flight: they do not count.
        let counted = sent.len().saturating_sub(100);
        let answered_of_counted = answered.iter().filter(|&&(seq, _)| (seq as usize) < counted).count();
        let gap = answered
            .windows(2)
            .map(|w| sent[w[1].0 as usize].duration_since(sent[w[0].0 as usize]))
            .max()
            .unwrap_or_default()
            .saturating_sub(Duration::from_millis(1));
        (counted, answered_of_counted, gap)
    }
}

/// Echoes every datagram and every byte of every TCP connection to the VM.
fn serve_vm(udp: UdpSocket, tcp: TcpListener) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while let Ok((n, from)) = udp.recv_from(&mut buf) {
            let _ = udp.send_to(&buf[..n], from);
        }
    });
    std::thread::spawn(move || {
        while let Ok((mut stream, _)) = tcp.accept() {
            std::thread::spawn(move || {
                let mut buf = [0u8; 256];
                while let Ok(n @ 1..) = stream.read(&mut buf) {
                    if stream.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
}

/// Writes a counter over `stream` every 5 ms and checks each echo (counted
/// in `echoes`), until stopped; the first error, if any.
fn talk(
    mut stream: TcpStream,
    echoes: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Option<String>> {
    std::thread::spawn(move || {
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let mut echo = [0u8; 8];
            let outcome = stream.write_all(&n.to_be_bytes()).and_then(|()| stream.read_exact(&mut echo));
            match outcome {
                Ok(()) if echo == n.to_be_bytes() => {
                    n += 1;
                    echoes.store(n, Ordering::Relaxed);
                }
                Ok(()) => return Some(format!("echo {echo:?} for {n}")),
                Err(e) => return Some(e.to_string()),
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        None
    })
}

async fn index(handle: &rtnetlink::Handle, name: &str) -> Option<u32> {
    handle.link().get().match_name(name.to_owned()).execute().try_next().await.ok().flatten().map(|l| l.header.index)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_vm_keeps_its_address_and_its_tcp_connection() {
    let Some(t) = or_skip(topology()) else { return };
    // The VM serves; the client connects to it and probes it, all through site A.
    let probes = t.serve_and_probe();
    let stream = t.client.run(|| {
        let stream =
            TcpStream::connect_timeout(&(VM_V4.parse::<IpAddr>().unwrap(), 7001).into(), Duration::from_secs(5))
                .expect("a TCP connection to the VM through site A");
        stream.set_read_timeout(Some(Duration::from_secs(10))).expect("a read timeout");
        stream
    });
    let stop_talking = Arc::new(AtomicBool::new(false));
    let echoes = Arc::new(AtomicU64::new(0));
    let talking = talk(stream, Arc::clone(&echoes), Arc::clone(&stop_talking));
    Topology::answered_again(&probes, 0, 101, "the VM answers at site A before the move").await;

    let full_size = t.vm.run(|| UdpSocket::bind("0.0.0.0:7002").expect("udp"));
    full_size.set_read_timeout(Some(Duration::from_secs(2))).expect("a read timeout");

    let (site_a, site_b) = (t.a.netlink(), t.b.netlink());
    let (at_a, at_b) = (t.a.driver("10.0.12.1"), t.b.driver("10.0.12.2"));
    let (m, at_b_sees) = (web_1("10.0.12.1"), web_1("10.0.12.2"));
    let b_file = t.b.file();
    let vport = index(&site_a, "vport").await.expect("the VM's port at site A");

    // The cutover, in the executors' order: the VM pauses at A, A forwards,
    // B routes, the VM starts at B (its NIC now plugs into B's bridge), B announces.
    let paused = Instant::now();
    site_a.link().set(LinkUnspec::new_with_index(vport).down().build()).execute().await.expect("pausing");
    let forwarded = timed(at_a.forward_away(&m)).await;
    let routed = timed(at_b.route_here(&at_b_sees)).await;
    site_a
        .link()
        .set(LinkUnspec::new_with_index(vport).setns_by_fd(std::os::fd::AsRawFd::as_raw_fd(&b_file)).build())
        .execute()
        .await
        .expect("the VM's NIC to site B");
    let (vport, bridge) = (
        index(&site_b, "vport").await.expect("the VM's port at B"),
        index(&site_b, "br-vms").await.expect("B's bridge"),
    );
    site_b
        .link()
        .set(LinkUnspec::new_with_index(vport).controller(bridge).up().build())
        .execute()
        .await
        .expect("starting the VM at B");
    let announced = timed(at_b.announce(&at_b_sees)).await;
    let cutover = paused.elapsed();
    for (step, timed) in [("forward", &forwarded), ("route", &routed), ("announce", &announced)] {
        if let Err(e) = &timed.outcome {
            panic!("{step}: {e}");
        }
    }

    // The VM answers again, through A's tunnel to B.
    let echoes_at_move = echoes.load(Ordering::Relaxed);
    Topology::answered_again(&probes, probes.answered(), 200, "the VM never answered again at site B").await;
    let echoed = async || echoes.load(Ordering::Relaxed);
    let resumed = wait_until(Duration::from_secs(10), Duration::from_millis(20), echoed, |&n| n >= echoes_at_move + 10);
    assert!(resumed.await.is_ok(), "the TCP connection never carried on at site B");
    stop_talking.store(true, Ordering::Relaxed);
    let broken = talking.join().expect("the TCP client");
    let echoes = echoes.load(Ordering::Relaxed);
    assert_eq!(broken, None, "the TCP connection survives the move ({echoes} echoes)");
    let (sent, answered, interruption) = probes.finish();
    let lost = sent - answered;

    // Where the addresses lead now; each end's tunnel names the other as its remote.
    let tunnel = "hvx4242";
    let vni = format!("vxlan id {} remote", m.tunnel_key % 0xFF_FFFE + 1);
    assert!(t.a.ip_output(&format!("-d link show {tunnel}")).contains(&format!("{vni} 10.0.12.2")));
    assert!(t.b.ip_output(&format!("-d link show {tunnel}")).contains(&format!("{vni} 10.0.12.1")));
    assert!(t.a.ip_output("route show").contains(&format!("{VM_V4} dev {tunnel}")), "A forwards into the tunnel");
    assert!(t.a.ip_output("-6 route show").contains(&format!("{VM_V6} dev {tunnel}")), "the /128 as well");
    assert!(t.b.ip_output("route show").contains(&format!("{VM_V4} dev br-vms")), "B routes to the VM's link");
    assert!(t.b.ip_output("-6 route show").contains(&format!("{VM_V6} dev br-vms")));

    // A full-size packet (1500 bytes, don't-fragment: Linux sets it on UDP that fits the path)
    // gets through the tunnel whole: its outer packet is fragmented on the WAN instead.
    let sender = t.client.run(|| UdpSocket::bind("0.0.0.0:0").expect("udp"));
    sender.send_to(&[7u8; 1472], (VM_V4, 7002)).expect("sending a full-size datagram");
    let mut buf = [0u8; 2048];
    let (size, _) = full_size.recv_from(&mut buf).expect("a full-size datagram through the tunnel");
    assert_eq!(size, 1472);

    // The operator's routing converged: both ends let go of the tunnel; B keeps its routes.
    at_a.release(&m).await.expect("releasing");
    at_b.release(&at_b_sees).await.expect("releasing");
    assert!(index(&site_a, tunnel).await.is_none() && index(&site_b, tunnel).await.is_none(), "the tunnels are gone");
    assert!(!t.a.ip_output("route show").contains(VM_V4), "A's forwarding went with its tunnel");
    assert!(t.b.ip_output("route show").contains(&format!("{VM_V4} dev br-vms")));

    let ms = |d: std::time::Duration| (d.as_secs_f64() * 1e4).round() / 10.0;
    let report = serde_json::json!({
        "probes_sent": sent,
        "probes_lost": lost,
        "interruption_ms": ms(interruption),
        "cutover_ms": ms(cutover),
        "forward_away_ms": ms(forwarded.duration),
        "route_here_ms": ms(routed.duration),
        "announce_ms": ms(announced.duration),
        "tcp_echoes": echoes,
    });
    println!("{report}");
    assert!(lost < sent, "the VM answered probes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_rolled_back_after_its_cutover_gives_the_addresses_back() {
    let Some(t) = or_skip(topology()) else { return };
    let probes = t.serve_and_probe();
    Topology::answered_again(&probes, 0, 100, "the VM never answered at A").await;
    let (at_a, m) = (t.a.driver("10.0.12.1"), web_1("10.0.12.1"));
    // A forwards at the cutover, but B never confirms: what A forwards is lost ...
    at_a.forward_away(&m).await.expect("forwarding");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (forwarding, sent) = (probes.answered(), probes.sent());
    // 200 probes more go out (200 ms of them), which a VM reached would answer.
    let more =
        wait_until(Duration::from_secs(10), Duration::from_millis(20), async || probes.sent(), |&n| n >= sent + 200);
    assert!(more.await.is_ok(), "the probes stopped going out");
    assert_eq!(probes.answered(), forwarding, "nothing answers while A forwards to a B that never took the VM");
    // ... until the rollback takes the addresses back: the VM, still at A, answers again.
    at_a.take_back(&m).await.expect("taking back");
    Topology::answered_again(&probes, forwarding, 100, "the VM never answered at A again").await;
    assert!(t.a.ip_output("route show").contains(&format!("{VM_V4} dev br-vms")), "routed to the VM's link");
    assert!(t.a.ip_output("-6 route show").contains(&format!("{VM_V6} dev br-vms")));
    assert!(!t.a.ip_output("link show").contains("hvx"), "the tunnel went");
    probes.finish();
}

/// `heliotrope-executor run` for `site` with `token`, inside its namespace,
/// with the `linux` network driver holding a move's forwarding `hold_s` seconds.
fn executor(token: &str, app: &TestApp, ns: &Netns, site: &str, wan: &str, hold_s: &str, data: &Path) -> Child {
    Command::new("ip")
        .args(["netns", "exec", &ns.0])
        .arg(workspace_binary("heliotrope-executor"))
        .args(["run", "--site", site, "--listen", &format!("{wan}:7070"), "--sim-mib-per-gib", "0.25"])
        .args(["--streams", "2", "--network", "linux", "--network-tunnel-local", wan, "--network-hold-s", hold_s])
        .arg("--data-dir")
        .arg(data.join(site))
        .env("HELIOTROPE_SCHEDULER", format!("http://{}", app.addr))
        .env("HELIOTROPE_TOKEN", token)
        .env("RUST_LOG", std::env::var("EXECUTOR_LOG").unwrap_or_else(|_| "warn".into()))
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("an executor")
}

/// `heliotrope-executor network release` at `site`, as its operator runs it (with its executor's `token`).
async fn release_by_hand(token: &str, app: &TestApp, ns: &Netns, site: &str, data: &Path) -> String {
    // Not blocking: the scheduler it logs to runs on this test's runtime.
    let out = tokio::process::Command::new("ip")
        .args(["netns", "exec", &ns.0])
        .arg(workspace_binary("heliotrope-executor"))
        .args(["network", "release", "--network", "linux", "--data-dir"])
        .arg(data.join(site))
        .env("HELIOTROPE_SCHEDULER", format!("http://{}", app.addr))
        .env("HELIOTROPE_TOKEN", token)
        .output()
        .await
        .expect("heliotrope-executor network release");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The migration's network steps as logged: (step, driver, ok).
fn network_steps(detail: &Value) -> Vec<(String, String, bool)> {
    let events = detail["events"].as_array().map(Vec::as_slice).unwrap_or_default();
    events
        .iter()
        .filter(|e| !e["network"].is_null())
        .map(|e| {
            let n = &e["network"];
            (n["step"].as_str().unwrap_or("").into(), n["driver"].as_str().unwrap_or("").into(), n["ok"] == true)
        })
        .collect()
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn executors_move_the_network_at_the_cutover_and_release_it_after_the_hold_or_by_hand(pool: PgPool) {
    let Some(t) = or_skip(topology().and_then(|t| t.management().map(|()| t))) else { return };
    let app = spawn_on(pool, Services::driven(), format!("{SCHEDULER_HOST}:0").parse().unwrap()).await;
    for (name, price, carbon) in [("A", 300.0, 400.0), ("B", 20.0, 50.0)] {
        let id = site_at(&app, name, "active").await;
        flat_signals(&app, id, price, carbon, "EUR").await;
    }
    app.create("/v1/links", with(link("A", "B"), "/symmetric", json!(true))).await;
    app.create("/v1/vms", with(big_vm("web", "A"), "/addresses", json!([VM_V4, VM_V6]))).await;
    let probes = t.serve_and_probe();

    let data = tempfile::tempdir().unwrap();
    let (token_a, token_b) = (app.token(Role::Executor).await, app.token(Role::Executor).await);
    let _fleet = Processes(vec![
        // A holds its forwarding for an hour: its operator releases it by hand.
        executor(&token_a, &app, &t.a, "A", "10.0.12.1", "3600", data.path()),
        executor(&token_b, &app, &t.b, "B", "10.0.12.2", "3", data.path()),
    ]);
    let online = |page: &Value| {
        page["items"].as_array().is_some_and(|e| e.len() == 2 && e.iter().all(|e| e["state"] == "online"))
    };
    let executors = app.wait_for("both executors online", online, "/v1/executors").await;
    let tunnels: Vec<&str> =
        executors["items"].as_array().unwrap().iter().filter_map(|e| e["tunnel_address"].as_str()).collect();
    assert_eq!(tunnels.len(), 2, "each said where its tunnels end: {executors}");
    assert!(probes.answered() > 0, "the VM answers at site A");
    let applied = app.post("/v1/plans", json!({"dry_run": false})).await;
    assert_eq!(applied.body["status"], "applied", "{}", applied.body);
    let done = |page: &Value| page["items"][0]["state"] == "done";
    let id = app.wait_for("the move done", done, "/v1/migrations").await["items"][0]["id"].as_i64().unwrap();
    let path = format!("/v1/migrations/{id}");
    let moved = |detail: &Value| network_steps(detail).len() >= 3;
    let detail = app.wait_for("the network moved", moved, &path).await;
    let linux = |step: &str| (step.to_owned(), "linux".to_owned(), true);
    assert_eq!(
        network_steps(&detail)[..3],
        [linux("forward_away"), linux("route_here"), linux("announce")],
        "{detail}"
    );
    // B was told where its source is: its end of the tunnel names A as its remote.
    let route_here =
        detail["events"].as_array().unwrap().iter().find(|e| e["network"]["step"] == "route_here").unwrap();
    assert!(route_here["network"]["detail"].as_str().unwrap().contains("old site at 10.0.12.1"), "{route_here}");
    let tunnel = format!("hvx{id}");
    assert!(t.a.ip_output("route show").contains(&format!("{VM_V4} dev {tunnel}")), "A forwards into the tunnel");
    assert!(t.b.ip_output("-6 route show").contains(&format!("{VM_V6} dev br-vms")), "B routes the /128 to the VM");

    // The hypervisor's part (a sim VM has no NIC): the VM's NIC now plugs into B's bridge.
    t.a.ip(&format!("link set vport netns {}", t.b.0));
    t.b.ip("link set vport master br-vms up");
    t.b.ip(&format!("neigh flush {VM_V4}"));
    Topology::answered_again(&probes, probes.answered(), 100, "the VM never answered at B through A's tunnel").await;

    // The operator releases A's end by hand (once A heard the move was done
    // and holds it); after its hold (3 s) B releases its own. Both are logged.
    let held = data.path().join(format!("A/network/{id}.json"));
    let holds = wait_until(Duration::from_secs(10), Duration::from_millis(50), async || held.exists(), |&h| h).await;
    assert!(holds.is_ok(), "A never held its forwarding");
    let said = release_by_hand(&token_a, &app, &t.a, "A", data.path()).await;
    assert_eq!(said.trim(), format!("migration {id}: VXLAN {tunnel} removed"));
    assert!(!t.a.ip_output("link show").contains(&tunnel), "A let go of {tunnel}");
    let released = |detail: &Value| network_steps(detail).iter().filter(|(step, ..)| step == "release").count() == 2;
    let detail = app.wait_for("both ends released", released, &path).await;
    assert!(network_steps(&detail).iter().all(|(_, driver, ok)| driver == "linux" && *ok), "{detail}");
    for site in [&t.a, &t.b] {
        assert!(!site.ip_output("link show").contains(&tunnel), "{} let go of {tunnel}", site.0);
    }
    assert!(t.b.ip_output("route show").contains(&format!("{VM_V4} dev br-vms")), "B keeps its route");
    let (sent, answered, _) = probes.finish();
    assert!(answered < sent, "the move cost some probes: the test saw it happen");
}
