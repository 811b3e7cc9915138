//! The `linux` network driver: the site's router is the executor's host
//! (or its network namespace), programmed through netlink.
//!
//! Each move gets a VXLAN tunnel of its own: its device is named by the
//! migration, its VNI and both MACs come from the tunnel key (from the
//! job's secret), so both ends agree without talking and no one else can
//! predict them; each end's remote is the other's endpoint. The kernel
//! takes a VXLAN packet by its VNI from any sender, so only a firewall
//! that opens UDP 4789 to the peer executors alone keeps strangers out
//! (README, Security). The old site routes the VM's /32 and /128 into its
//! end with a permanent neighbour entry naming the new end's MAC, so
//! nothing has to be resolved across the tunnel. The new site's end only
//! decapsulates (reverse-path filtering on it is loose: the replies take
//! the site's own way out, not the tunnel; a strict `all` setting would
//! still drop them) and its routes lead the
//! addresses to the VM's local link. Announcing flushes the neighbour
//! entries of the VM's addresses there: packets that arrived while the VM
//! was paused left them unresolved, and the kernel would otherwise retry
//! only after a second.
//!
//! The tunnel keeps the VMs' 1500-byte MTU: a full-size packet leaves the
//! old site inside 1550 bytes, which the kernel fragments (VXLAN's outer
//! don't-fragment bit stays clear) unless the WAN carries that much. A
//! smaller tunnel MTU would instead make established TCP connections
//! rediscover their path, which fails where ICMP is filtered.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures_util::TryStreamExt;
use rtnetlink::packet_route::link::{AfSpecInet, AfSpecUnspec, InetDevConf, LinkAttribute};
use rtnetlink::packet_route::neighbour::NeighbourState;
use rtnetlink::packet_route::route::RouteScope;
use rtnetlink::{Handle, LinkUnspec, LinkVxlan, RouteMessageBuilder};

use super::{Done, NetworkError, NetworkMove};

/// How the driver is set up at a site.
#[derive(Debug, Clone)]
pub struct LinuxOptions {
    /// Where a VM's NIC attaches here: a bridge, or a per-VM device with
    /// `{vm}` standing for the VM's name.
    pub vm_link: String,
    /// This site's tunnel endpoint (the VXLAN source address); the kernel
    /// picks one by its routes if absent.
    pub local: Option<IpAddr>,
    /// VXLAN's UDP port (4789 is IANA's).
    pub vxlan_port: u16,
}

pub struct Linux {
    handle: Handle,
    options: LinuxOptions,
}

/// Which end of a move's tunnel.
#[derive(Clone, Copy)]
enum End {
    Old,
    New,
}

impl Linux {
    /// Opens a netlink socket in the calling thread's network namespace; its
    /// connection runs on the current tokio runtime.
    pub fn connect(options: LinuxOptions) -> Result<Self, NetworkError> {
        let (connection, handle, _) = rtnetlink::new_connection().map_err(NetworkError::Socket)?;
        tokio::spawn(connection);
        Ok(Linux { handle, options })
    }

    pub(super) async fn forward_away(&self, m: &NetworkMove) -> Result<Done, NetworkError> {
        let (vni, name) = (vni(m.tunnel_key), tunnel_name(m.migration));
        let (tunnel, peer) = self.add_tunnel(m, End::Old).await?;
        for &address in &m.addresses {
            self.route(address, tunnel).await?;
            self.handle
                .neighbours()
                .add(tunnel, address)
                .link_layer_address(&mac(m.tunnel_key, End::New))
                .state(NeighbourState::Permanent)
                .replace()
                .execute()
                .await
                .map_err(netlink(format!("the neighbour entry of {address} on {name}")))?;
        }
        Ok(Some(format!("{} forwarded to {peer} through VXLAN {name} (VNI {vni})", count(&m.addresses))))
    }

    pub(super) async fn route_here(&self, m: &NetworkMove) -> Result<Done, NetworkError> {
        let (vni, name) = (vni(m.tunnel_key), tunnel_name(m.migration));
        let (_, peer) = self.add_tunnel(m, End::New).await?;
        let link = self.vm_link(m);
        self.route_to_link(&m.addresses, &link).await?;
        Ok(Some(format!(
            "{} routed to {link}; VXLAN {name} (VNI {vni}) takes what the old site at {peer} forwards",
            count(&m.addresses)
        )))
    }

    pub(super) async fn announce(&self, m: &NetworkMove) -> Result<Done, NetworkError> {
        let link = self.vm_link(m);
        let index = self.index(&link).await?;
        for &address in &m.addresses {
            let mut request = self.handle.neighbours().add(index, address);
            let entry = request.message_mut().clone();
            match self.handle.neighbours().del(entry).execute().await {
                Ok(()) => {}
                Err(e) if absent(&e) => {}
                Err(e) => return Err(netlink(format!("flushing the neighbour entry of {address}"))(e)),
            }
        }
        Ok(Some(format!("the neighbour entries of {} on {link} flushed", count(&m.addresses))))
    }

    pub(super) async fn take_over(&self, m: &NetworkMove) -> Result<Done, NetworkError> {
        let link = self.vm_link(m);
        self.route_to_link(&m.addresses, &link).await?;
        let announced = self.announce(m).await?.unwrap_or_default();
        Ok(Some(format!("{} routed to {link} (restarted here; its site was lost); {announced}", count(&m.addresses))))
    }

    pub(super) async fn take_back(&self, m: &NetworkMove) -> Result<Done, NetworkError> {
        self.remove_tunnel(m.migration).await?;
        let link = self.vm_link(m);
        self.route_to_link(&m.addresses, &link).await?;
        Ok(Some(format!("forwarding removed; {} routed to {link} again", count(&m.addresses))))
    }

    pub(super) async fn release(&self, m: &NetworkMove) -> Result<Done, NetworkError> {
        let name = tunnel_name(m.migration);
        Ok(Some(if self.remove_tunnel(m.migration).await? {
            format!("VXLAN {name} removed")
        } else {
            format!("VXLAN {name} was gone already")
        }))
    }

    /// Creates this end of `m`'s tunnel, to the other end's endpoint
    /// (afresh, if a retry left one); its index and that endpoint.
    async fn add_tunnel(&self, m: &NetworkMove, end: End) -> Result<(u32, IpAddr), NetworkError> {
        let peer = m.peer.ok_or(NetworkError::NoPeer)?;
        if let Some(local) = self.options.local.filter(|local| local.is_ipv4() != peer.is_ipv4()) {
            return Err(NetworkError::Family { local, peer });
        }
        self.remove_tunnel(m.migration).await?;
        let (vni, name) = (vni(m.tunnel_key), tunnel_name(m.migration));
        let link = LinkVxlan::new(&name, vni).port(self.options.vxlan_port).learning(false);
        let mut link = match peer {
            IpAddr::V4(remote) => link.remote(remote),
            IpAddr::V6(remote) => link.remote6(remote),
        };
        // Of the peer's family (checked above).
        link = match self.options.local {
            Some(IpAddr::V4(local)) => link.local(local),
            Some(IpAddr::V6(local)) => link.local6(local),
            None => link,
        };
        let message = link.address(mac(m.tunnel_key, end).to_vec()).up().build();
        self.handle.link().add(message).execute().await.map_err(netlink(format!("adding VXLAN {name}")))?;
        let index = self.index(&name).await?;
        if let End::New = end {
            // Loose reverse-path filtering still drops what arrives on an
            // interface without an IPv4 address (most distributions turn it
            // on): the decapsulating end gets a link-local one.
            self.handle
                .address()
                .add(index, IpAddr::V4(DECAP_ADDRESS), 32)
                .execute()
                .await
                .map_err(netlink(format!("the address of {name}")))?;
            let mut loose = InetDevConf::default();
            loose.rp_filter = 2;
            let message = LinkUnspec::new_with_index(index)
                .append_extra_attribute(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet(vec![
                    AfSpecInet::DevConfRequest(loose),
                ])]))
                .build();
            self.handle
                .link()
                .set(message)
                .execute()
                .await
                .map_err(netlink(format!("loose reverse-path filtering on {name}")))?;
        }
        Ok((index, peer))
    }

    /// Removes `migration`'s tunnel (its routes and neighbour entries go
    /// with it); whether there was one.
    async fn remove_tunnel(&self, migration: i64) -> Result<bool, NetworkError> {
        let name = tunnel_name(migration);
        let index = match self.index(&name).await {
            Ok(index) => index,
            Err(NetworkError::NoInterface(_)) => return Ok(false),
            Err(e) => return Err(e),
        };
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(true),
            Err(e) if absent(&e) => Ok(false),
            Err(e) => Err(netlink(format!("removing VXLAN {name}"))(e)),
        }
    }

    async fn route_to_link(&self, addresses: &[IpAddr], link: &str) -> Result<(), NetworkError> {
        let index = self.index(link).await?;
        for &address in addresses {
            self.route(address, index).await?;
        }
        Ok(())
    }

    /// Routes `address` alone (/32, /128) out of interface `index`, replacing its route.
    async fn route(&self, address: IpAddr, index: u32) -> Result<(), NetworkError> {
        let route = match address {
            IpAddr::V4(a) => RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(a, 32)
                .output_interface(index)
                .scope(RouteScope::Link)
                .build(),
            IpAddr::V6(a) => {
                RouteMessageBuilder::<Ipv6Addr>::new().destination_prefix(a, 128).output_interface(index).build()
            }
        };
        self.handle.route().add(route).replace().execute().await.map_err(netlink(format!("the route to {address}")))
    }

    async fn index(&self, name: &str) -> Result<u32, NetworkError> {
        let found = self.handle.link().get().match_name(name.to_owned()).execute().try_next().await;
        match found {
            Ok(Some(link)) => Ok(link.header.index),
            Ok(None) => Err(NetworkError::NoInterface(name.to_owned())),
            Err(e) if absent(&e) => Err(NetworkError::NoInterface(name.to_owned())),
            Err(e) => Err(netlink(format!("looking up {name}"))(e)),
        }
    }

    fn vm_link(&self, m: &NetworkMove) -> String {
        self.options.vm_link.replace("{vm}", &m.vm)
    }
}

/// The address of every decapsulating tunnel end (link-local: never routed).
const DECAP_ADDRESS: Ipv4Addr = Ipv4Addr::new(169, 254, 72, 86);

/// A move's VXLAN network identifier: 1 to 2^24 - 2, from its tunnel key.
fn vni(key: u64) -> u32 {
    // Below 2^24, so it fits.
    (key % 0xFF_FFFE + 1) as u32
}

/// A move's tunnel device (at most 13 characters: the kernel allows 15).
fn tunnel_name(migration: i64) -> String {
    format!("hvx{}", migration.rem_euclid(10_000_000_000))
}

/// The MAC of one end of a move's tunnel: locally administered, unicast,
/// the rest from the tunnel key (bytes the VNI does not use).
fn mac(key: u64, end: End) -> [u8; 6] {
    let first = match end {
        End::Old => 0x02,
        End::New => 0x06,
    };
    let [.., a, b, c, d, e] = key.to_le_bytes();
    [first, a, b, c, d, e]
}

fn count(addresses: &[IpAddr]) -> String {
    match addresses.len() {
        1 => "1 address".to_owned(),
        n => format!("{n} addresses"),
    }
}

/// Whether netlink said the thing is not there.
fn absent(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if [libc::ENOENT, libc::ENODEV, libc::ESRCH].contains(&-m.raw_code()))
}

fn netlink(what: String) -> impl FnOnce(rtnetlink::Error) -> NetworkError {
    move |source| NetworkError::Netlink { what, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_ends_derive_the_same_tunnel_from_the_key_and_the_migration() {
        assert_eq!(vni(1), 2);
        assert_eq!(vni(0xFF_FFFE), 1);
        assert!((1..0xFF_FFFF).contains(&vni(u64::MAX)));
        assert_eq!(tunnel_name(4242), "hvx4242");
        assert!(tunnel_name(i64::MAX).len() <= 15 && tunnel_name(-5).len() <= 15);
        let key = crate::network::tunnel_key("00ff");
        assert_eq!(key, crate::network::tunnel_key("00ff"), "both ends derive one key from the secret");
        assert_ne!(key, crate::network::tunnel_key("00fe"));
        assert_ne!(mac(key, End::Old), mac(key, End::New));
        for end in [End::Old, End::New] {
            let first = mac(key, end)[0];
            assert_eq!(first & 0b11, 0b10, "locally administered unicast");
        }
    }
}
