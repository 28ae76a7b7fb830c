//! Who a module may call over outbound HTTP. Pure decisions, no I/O: the request path
//! asks about the URL before anything is resolved, then about every address the name
//! resolved to before anything is connected.
//!
//! The threat is a module (or a URL it was given) that aims at what sits behind the
//! server rather than at the internet: the server's own API, other services on
//! loopback or the private network, and cloud metadata endpoints that hand out
//! credentials. So the grant decides which *names* are reachable, and the address policy
//! decides which *addresses* any name may lead to; both must agree.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use crate::domain::{Grants, HostName};

/// How outbound HTTP behaves on this server; set once by the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundSettings {
    /// Opens loopback, private (10/8, 172.16/12, 192.168/16, fc00::/7) and shared
    /// (100.64/10) addresses. Link-local and cloud metadata addresses stay closed; list
    /// them in `allowed_networks` if they are really meant.
    pub allow_private: bool,
    /// Addresses opened explicitly, whatever their kind (`127.0.0.1` for a test server,
    /// `10.1.0.0/16` for an internal API).
    pub allowed_networks: Vec<IpNetwork>,
    /// The server's own listen addresses: never reachable, whatever is allowed above. A
    /// listener on `0.0.0.0:8080` closes port 8080 on every non-public address.
    pub own_addresses: Vec<SocketAddr>,
    /// How long resolving and connecting may take, at most; a guest may ask for less.
    pub connect_timeout: Duration,
    /// The largest response body a guest may receive; past it the body stream fails.
    pub max_response_bytes: u64,
    /// Requests one run may have under way at once (sent and not yet read to the end).
    /// Each holds a connection and a task; a guest that fires requests in a loop
    /// without reading them would otherwise hold thousands until its deadline.
    pub max_requests_in_flight: usize,
    /// The roots an https server's certificate is checked against.
    pub tls: super::tls::OutboundTls,
}

impl Default for OutboundSettings {
    fn default() -> Self {
        Self {
            allow_private: false,
            allowed_networks: Vec::new(),
            own_addresses: Vec::new(),
            connect_timeout: Duration::from_secs(10),
            max_response_bytes: 10 * 1024 * 1024,
            max_requests_in_flight: 16,
            tls: super::tls::OutboundTls::default(),
        }
    }
}

/// An IP network (`10.0.0.0/8`, `fd00::/8`) or a single address (`127.0.0.1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNetwork {
    base: IpAddr,
    prefix: u8,
}

/// Why an address or network was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not an IP address or network (e.g. 127.0.0.1, 10.0.0.0/8, fd00::/8)")]
pub struct BadNetwork(String);

impl IpNetwork {
    pub fn new(base: IpAddr, prefix: u8) -> Option<Self> {
        let bits = match base {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        (prefix <= bits).then_some(Self { base, prefix })
    }

    /// Whether `ip` is inside this network. An IPv4-mapped IPv6 address counts as the
    /// IPv4 address it carries.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.base, canonical(ip)) {
            (IpAddr::V4(base), IpAddr::V4(ip)) => prefix_eq(
                u128::from(base.to_bits()),
                u128::from(ip.to_bits()),
                32,
                self.prefix,
            ),
            (IpAddr::V6(base), IpAddr::V6(ip)) => {
                prefix_eq(base.to_bits(), ip.to_bits(), 128, self.prefix)
            }
            _ => false,
        }
    }
}

fn prefix_eq(a: u128, b: u128, bits: u8, prefix: u8) -> bool {
    let shift = u32::from(bits - prefix);
    shift >= u32::from(bits) || (a >> shift) == (b >> shift)
}

impl FromStr for IpNetwork {
    type Err = BadNetwork;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || BadNetwork(text.to_owned());
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let base: IpAddr = addr.parse().map_err(|_| bad())?;
        let prefix = match prefix {
            Some(prefix) => prefix.parse().map_err(|_| bad())?,
            None if base.is_ipv4() => 32,
            None => 128,
        };
        Self::new(base, prefix).ok_or_else(bad)
    }
}

impl fmt::Display for IpNetwork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix)
    }
}

/// What kind of address an IP is, as far as reaching it from a job matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AddressClass {
    /// Anywhere on the internet.
    Public,
    Loopback,
    /// RFC 1918 and IPv6 unique-local (and deprecated site-local) space.
    Private,
    /// Carrier-grade NAT space (100.64/10), private in practice.
    Shared,
    LinkLocal,
    /// Endpoints that hand out cloud credentials: 169.254.169.254 (AWS, GCP, Azure,
    /// ...), fd00:ec2::254 (AWS over IPv6), 100.100.100.200 (Alibaba).
    Metadata,
    /// 0.0.0.0/8 and `::`; connecting to them reaches the local machine.
    Unspecified,
    Multicast,
    Broadcast,
    /// Documentation, benchmarking and IETF ranges, and 240/4: never a real server.
    Reserved,
}

impl AddressClass {
    fn describe(self) -> &'static str {
        match self {
            AddressClass::Public => "public",
            AddressClass::Loopback => "loopback",
            AddressClass::Private => "private",
            AddressClass::Shared => "shared (carrier-grade NAT)",
            AddressClass::LinkLocal => "link-local",
            AddressClass::Metadata => "cloud metadata",
            AddressClass::Unspecified => "unspecified",
            AddressClass::Multicast => "multicast",
            AddressClass::Broadcast => "broadcast",
            AddressClass::Reserved => "reserved",
        }
    }

    /// The classes `allow_private` opens.
    fn is_private_network(self) -> bool {
        matches!(
            self,
            AddressClass::Loopback | AddressClass::Private | AddressClass::Shared
        )
    }
}

impl fmt::Display for AddressClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

/// The IPv4 address an IPv6 address stands for, when it is a mapped (`::ffff:a.b.c.d`)
/// or compatible (`::a.b.c.d`) form; otherwise the address itself.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.segments() {
            [0, 0, 0, 0, 0, 0xffff, _, _] => IpAddr::V4(embedded_v4(v6, 96)),
            // `::` and `::1` are IPv6 addresses in their own right.
            [0, 0, 0, 0, 0, 0, hi, _] if hi != 0 => IpAddr::V4(embedded_v4(v6, 96)),
            _ => ip,
        },
        IpAddr::V4(_) => ip,
    }
}

/// The 32 bits of `v6` starting `offset` bits from its most significant end.
fn embedded_v4(v6: Ipv6Addr, offset: u32) -> Ipv4Addr {
    Ipv4Addr::from_bits((v6.to_bits() >> (96 - offset)) as u32)
}

const METADATA_V4: [Ipv4Addr; 2] = [
    Ipv4Addr::new(169, 254, 169, 254),
    Ipv4Addr::new(100, 100, 100, 200),
];
const METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254);

fn in_v4(ip: Ipv4Addr, base: [u8; 4], prefix: u8) -> bool {
    prefix_eq(
        u128::from(ip.to_bits()),
        u128::from(Ipv4Addr::from(base).to_bits()),
        32,
        prefix,
    )
}

fn in_v6(ip: Ipv6Addr, base: [u16; 8], prefix: u8) -> bool {
    prefix_eq(ip.to_bits(), Ipv6Addr::from(base).to_bits(), 128, prefix)
}

/// The class of `ip`. IPv6 forms that carry an IPv4 address (mapped, compatible, NAT64
/// `64:ff9b::/96`, 6to4 `2002::/16`) are judged by the address they carry when that
/// address is not public, so none of them is a way around the IPv4 rules.
pub(super) fn classify(ip: IpAddr) -> AddressClass {
    match canonical(ip) {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> AddressClass {
    if METADATA_V4.contains(&ip) {
        return AddressClass::Metadata;
    }
    if ip == Ipv4Addr::BROADCAST {
        return AddressClass::Broadcast;
    }
    let ranges: &[([u8; 4], u8, AddressClass)] = &[
        ([0, 0, 0, 0], 8, AddressClass::Unspecified),
        ([127, 0, 0, 0], 8, AddressClass::Loopback),
        ([10, 0, 0, 0], 8, AddressClass::Private),
        ([172, 16, 0, 0], 12, AddressClass::Private),
        ([192, 168, 0, 0], 16, AddressClass::Private),
        ([100, 64, 0, 0], 10, AddressClass::Shared),
        ([169, 254, 0, 0], 16, AddressClass::LinkLocal),
        ([224, 0, 0, 0], 4, AddressClass::Multicast),
        ([240, 0, 0, 0], 4, AddressClass::Reserved),
        ([192, 0, 0, 0], 24, AddressClass::Reserved),
        ([192, 0, 2, 0], 24, AddressClass::Reserved),
        ([198, 18, 0, 0], 15, AddressClass::Reserved),
        ([198, 51, 100, 0], 24, AddressClass::Reserved),
        ([203, 0, 113, 0], 24, AddressClass::Reserved),
    ];
    ranges
        .iter()
        .find(|(base, prefix, _)| in_v4(ip, *base, *prefix))
        .map_or(AddressClass::Public, |(_, _, class)| *class)
}

fn classify_v6(ip: Ipv6Addr) -> AddressClass {
    if ip == METADATA_V6 {
        return AddressClass::Metadata;
    }
    if ip.is_unspecified() {
        return AddressClass::Unspecified;
    }
    if ip.is_loopback() {
        return AddressClass::Loopback;
    }
    let carried = if in_v6(ip, [0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96) {
        Some(embedded_v4(ip, 96))
    } else if in_v6(ip, [0x2002, 0, 0, 0, 0, 0, 0, 0], 16) {
        Some(embedded_v4(ip, 16))
    } else {
        None
    };
    if let Some(v4) = carried {
        return classify_v4(v4);
    }
    let ranges: &[([u16; 8], u8, AddressClass)] = &[
        // The deprecated IPv4-compatible space; `::` and `::1` are handled above.
        ([0, 0, 0, 0, 0, 0, 0, 0], 96, AddressClass::Reserved),
        ([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7, AddressClass::Private),
        ([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10, AddressClass::Private),
        ([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10, AddressClass::LinkLocal),
        ([0xff00, 0, 0, 0, 0, 0, 0, 0], 8, AddressClass::Multicast),
        (
            [0x2001, 0x0db8, 0, 0, 0, 0, 0, 0],
            32,
            AddressClass::Reserved,
        ),
        ([0x0100, 0, 0, 0, 0, 0, 0, 0], 64, AddressClass::Reserved),
    ];
    ranges
        .iter()
        .find(|(base, prefix, _)| in_v6(ip, *base, *prefix))
        .map_or(AddressClass::Public, |(_, _, class)| *class)
}

/// Why a request was refused. The text is what the execution log shows the author.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Denial {
    #[error("`{host}:{port}` is not among the module's granted outbound hosts")]
    NotGranted { host: String, port: u16 },
    #[error("only http:// and https:// URLs can be called, not `{0}://`")]
    UnsupportedScheme(String),
    #[error("`{0}` is not a valid host")]
    BadHost(String),
    #[error(
        "`{host}` is {ip}, a {class} address, which this server does not allow whatever the \
         module's grant; an operator can open it (`runcell serve --outbound-allow`, \
         `runcell run --allow-address`)"
    )]
    Address {
        host: String,
        ip: IpAddr,
        class: AddressClass,
    },
    #[error("`{host}` is {addr}, this server's own address")]
    OwnAddress { host: String, addr: SocketAddr },
    /// A budget of the module over this host is used up until the end of its window.
    #[error("budget exhausted until {}", crate::domain::budget::utc_time_of_day(*until))]
    Budget { until: crate::domain::Millis },
}

/// The outbound HTTP rules of one execution: the module's grant and the operator's
/// settings. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct OutboundPolicy {
    grants: Arc<Grants>,
    settings: Arc<OutboundSettings>,
}

impl OutboundPolicy {
    pub(crate) fn new(grants: Arc<Grants>, settings: Arc<OutboundSettings>) -> Self {
        Self { grants, settings }
    }

    pub(crate) fn settings(&self) -> &OutboundSettings {
        &self.settings
    }

    /// Decides on a URL before anything is resolved: the scheme must be one this host
    /// speaks and the host and port within the grant.
    pub(crate) fn check_target(
        &self,
        scheme: &str,
        host: &HostName,
        port: u16,
    ) -> Result<(), Denial> {
        if !self.grants.may_reach(host, port) {
            return Err(Denial::NotGranted {
                host: host.to_string(),
                port,
            });
        }
        match scheme {
            "http" | "https" => Ok(()),
            other => Err(Denial::UnsupportedScheme(other.to_owned())),
        }
    }

    /// Decides on the addresses `host` resolved to: every one of them must be allowed,
    /// so a name cannot mix a public address with an internal one and hope the
    /// connection picks the latter.
    pub(crate) fn check_addresses(
        &self,
        host: &HostName,
        addrs: &[SocketAddr],
    ) -> Result<(), Denial> {
        addrs
            .iter()
            .try_for_each(|&addr| self.check_address(host, addr))
    }

    /// Decides on one address: never the server itself; then anything listed
    /// explicitly; then public addresses, and private ones if the operator opened them.
    pub(crate) fn check_address(&self, host: &HostName, addr: SocketAddr) -> Result<(), Denial> {
        let ip = canonical(addr.ip());
        let class = classify(ip);
        let own = self.settings.own_addresses.iter().any(|own| {
            own.port() == addr.port()
                && (canonical(own.ip()) == ip
                    || (own.ip().is_unspecified() && class != AddressClass::Public))
        });
        if own {
            return Err(Denial::OwnAddress {
                host: host.to_string(),
                addr,
            });
        }
        let listed = self
            .settings
            .allowed_networks
            .iter()
            .any(|network| network.contains(ip));
        if listed
            || class == AddressClass::Public
            || (self.settings.allow_private && class.is_private_network())
        {
            return Ok(());
        }
        Err(Denial::Address {
            host: host.to_string(),
            ip,
            class,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn net(text: &str) -> IpNetwork {
        text.parse().unwrap()
    }

    fn host(text: &str) -> HostName {
        HostName::parse(text).unwrap()
    }

    fn policy(hosts: &[&str], settings: OutboundSettings) -> OutboundPolicy {
        OutboundPolicy::new(
            Arc::new(Grants {
                outbound_hosts: hosts.iter().map(|h| (*h).to_owned()).collect(),
                ..Grants::default()
            }),
            Arc::new(settings),
        )
    }

    fn allows(policy: &OutboundPolicy, addr: &str) -> bool {
        let addr: SocketAddr = addr.parse().unwrap();
        policy.check_address(&host("example.com"), addr).is_ok()
    }

    #[test]
    fn every_kind_of_address_is_classified() {
        let cases = [
            ("93.184.215.14", AddressClass::Public),
            ("2606:4700::1111", AddressClass::Public),
            ("127.0.0.1", AddressClass::Loopback),
            ("127.255.255.254", AddressClass::Loopback),
            ("::1", AddressClass::Loopback),
            ("10.1.2.3", AddressClass::Private),
            ("172.16.0.1", AddressClass::Private),
            ("172.31.255.255", AddressClass::Private),
            ("192.168.1.1", AddressClass::Private),
            ("fc00::1", AddressClass::Private),
            ("fd12:3456::1", AddressClass::Private),
            ("fec0::1", AddressClass::Private),
            ("100.64.0.1", AddressClass::Shared),
            ("100.127.255.255", AddressClass::Shared),
            ("169.254.1.1", AddressClass::LinkLocal),
            ("fe80::1", AddressClass::LinkLocal),
            ("169.254.169.254", AddressClass::Metadata),
            ("100.100.100.200", AddressClass::Metadata),
            ("fd00:ec2::254", AddressClass::Metadata),
            ("0.0.0.0", AddressClass::Unspecified),
            ("0.1.2.3", AddressClass::Unspecified),
            ("::", AddressClass::Unspecified),
            ("224.0.0.1", AddressClass::Multicast),
            ("239.255.255.250", AddressClass::Multicast),
            ("ff02::1", AddressClass::Multicast),
            ("255.255.255.255", AddressClass::Broadcast),
            ("240.0.0.1", AddressClass::Reserved),
            ("192.0.2.1", AddressClass::Reserved),
            ("198.18.0.1", AddressClass::Reserved),
            ("2001:db8::1", AddressClass::Reserved),
            ("::2", AddressClass::Reserved),
        ];
        for (text, class) in cases {
            assert_eq!(classify(ip(text)), class, "{text}");
        }
    }

    #[test]
    fn neighbours_of_the_closed_ranges_are_public() {
        for text in [
            "172.15.255.255",
            "172.32.0.0",
            "100.63.255.255",
            "100.128.0.0",
            "11.0.0.0",
            "126.255.255.255",
            "128.0.0.0",
            "169.253.255.255",
            "223.255.255.255",
            "fbff:ffff::1",
        ] {
            assert_eq!(classify(ip(text)), AddressClass::Public, "{text}");
        }
    }

    #[test]
    fn ipv6_forms_that_carry_an_ipv4_address_are_judged_by_it() {
        assert_eq!(classify(ip("::ffff:127.0.0.1")), AddressClass::Loopback);
        assert_eq!(classify(ip("::ffff:10.0.0.1")), AddressClass::Private);
        assert_eq!(
            classify(ip("::ffff:169.254.169.254")),
            AddressClass::Metadata
        );
        assert_eq!(classify(ip("::ffff:0.0.0.0")), AddressClass::Unspecified);
        assert_eq!(classify(ip("::127.0.0.1")), AddressClass::Loopback);
        assert_eq!(classify(ip("64:ff9b::a9fe:a9fe")), AddressClass::Metadata);
        assert_eq!(classify(ip("64:ff9b::7f00:1")), AddressClass::Loopback);
        assert_eq!(classify(ip("2002:c0a8:0101::1")), AddressClass::Private);
        assert_eq!(classify(ip("::ffff:93.184.215.14")), AddressClass::Public);
        assert_eq!(classify(ip("64:ff9b::5db8:d70e")), AddressClass::Public);
    }

    #[test]
    fn networks_parse_from_addresses_and_prefixes() {
        assert!(net("127.0.0.1").contains(ip("127.0.0.1")));
        assert!(!net("127.0.0.1").contains(ip("127.0.0.2")));
        assert!(net("10.0.0.0/8").contains(ip("10.200.3.4")));
        assert!(!net("10.0.0.0/8").contains(ip("11.0.0.0")));
        assert!(net("10.0.0.0/8").contains(ip("::ffff:10.1.1.1")));
        assert!(net("fd00::/8").contains(ip("fd12::1")));
        assert!(!net("fd00::/8").contains(ip("10.0.0.1")));
        assert!(net("0.0.0.0/0").contains(ip("169.254.169.254")));
        assert!(net("::/0").contains(ip("::1")));
        assert_eq!(net("10.0.0.0/8").to_string(), "10.0.0.0/8");
        for bad in [
            "",
            "10.0.0.0/33",
            "::/129",
            "localhost",
            "10.0.0/8",
            "10.0.0.0/x",
        ] {
            assert!(bad.parse::<IpNetwork>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn only_public_addresses_are_reachable_by_default() {
        let p = policy(&[], OutboundSettings::default());
        assert!(allows(&p, "93.184.215.14:80"));
        assert!(allows(&p, "[2606:4700::1111]:443"));
        for closed in [
            "127.0.0.1:80",
            "[::1]:80",
            "[::ffff:127.0.0.1]:80",
            "10.0.0.1:80",
            "172.16.0.1:80",
            "192.168.0.1:80",
            "[fd00::1]:80",
            "100.64.0.1:80",
            "169.254.1.1:80",
            "[fe80::1]:80",
            "169.254.169.254:80",
            "[fd00:ec2::254]:80",
            "100.100.100.200:80",
            "0.0.0.0:80",
            "[::]:80",
            "224.0.0.1:80",
            "255.255.255.255:80",
            "240.0.0.1:80",
        ] {
            assert!(!allows(&p, closed), "{closed} allowed");
        }
    }

    #[test]
    fn allow_private_opens_private_networks_but_not_metadata_or_link_local() {
        let p = policy(
            &[],
            OutboundSettings {
                allow_private: true,
                ..OutboundSettings::default()
            },
        );
        for open in [
            "127.0.0.1:80",
            "[::1]:80",
            "10.0.0.1:80",
            "[fd00::1]:80",
            "100.64.0.1:80",
        ] {
            assert!(allows(&p, open), "{open} refused");
        }
        for closed in [
            "169.254.169.254:80",
            "[::ffff:169.254.169.254]:80",
            "100.100.100.200:80",
            "[fd00:ec2::254]:80",
            "169.254.1.1:80",
            "0.0.0.0:80",
            "224.0.0.1:80",
        ] {
            assert!(!allows(&p, closed), "{closed} allowed");
        }
    }

    #[test]
    fn a_listed_network_opens_exactly_that_network() {
        let p = policy(
            &[],
            OutboundSettings {
                allowed_networks: vec![net("127.0.0.1"), net("169.254.169.254")],
                ..OutboundSettings::default()
            },
        );
        assert!(allows(&p, "127.0.0.1:8080"));
        assert!(allows(&p, "[::ffff:127.0.0.1]:8080"));
        assert!(!allows(&p, "127.0.0.2:8080"));
        assert!(!allows(&p, "[::1]:8080"));
        assert!(allows(&p, "169.254.169.254:80"), "metadata when listed");
        assert!(!allows(&p, "10.0.0.1:80"));
    }

    #[test]
    fn the_servers_own_address_stays_closed_whatever_is_allowed() {
        let p = policy(
            &[],
            OutboundSettings {
                allow_private: true,
                allowed_networks: vec![net("0.0.0.0/0")],
                own_addresses: vec!["127.0.0.1:8080".parse().unwrap()],
                ..OutboundSettings::default()
            },
        );
        assert!(!allows(&p, "127.0.0.1:8080"));
        assert!(!allows(&p, "[::ffff:127.0.0.1]:8080"));
        assert!(allows(&p, "127.0.0.1:8081"));
        let denial = p
            .check_address(&host("localhost"), "127.0.0.1:8080".parse().unwrap())
            .unwrap_err();
        assert_eq!(
            denial.to_string(),
            "`localhost` is 127.0.0.1:8080, this server's own address"
        );
    }

    #[test]
    fn a_wildcard_listener_closes_its_port_on_every_local_address() {
        let p = policy(
            &[],
            OutboundSettings {
                allow_private: true,
                own_addresses: vec!["[::]:8080".parse().unwrap()],
                ..OutboundSettings::default()
            },
        );
        assert!(!allows(&p, "127.0.0.1:8080"));
        assert!(!allows(&p, "10.0.0.5:8080"));
        assert!(!allows(&p, "[::1]:8080"));
        assert!(allows(&p, "10.0.0.5:8081"));
        assert!(allows(&p, "93.184.215.14:8080"), "someone else's server");
    }

    #[test]
    fn one_forbidden_address_among_many_refuses_the_name() {
        let p = policy(&[], OutboundSettings::default());
        let public: SocketAddr = "93.184.215.14:80".parse().unwrap();
        let metadata: SocketAddr = "169.254.169.254:80".parse().unwrap();
        let name = host("rebind.example");
        assert_eq!(p.check_addresses(&name, &[public]), Ok(()));
        let denial = p.check_addresses(&name, &[public, metadata]).unwrap_err();
        assert_eq!(
            denial.to_string(),
            "`rebind.example` is 169.254.169.254, a cloud metadata address, which this server \
             does not allow whatever the module's grant; an operator can open it \
             (`runcell serve --outbound-allow`, `runcell run --allow-address`)"
        );
    }

    #[test]
    fn targets_outside_the_grant_or_over_other_schemes_are_refused() {
        let p = policy(
            &["api.example.com", "127.0.0.1:3000"],
            OutboundSettings::default(),
        );
        assert_eq!(p.check_target("http", &host("api.example.com"), 80), Ok(()));
        assert_eq!(p.check_target("http", &host("127.0.0.1"), 3000), Ok(()));
        assert_eq!(
            p.check_target("http", &host("evil.example"), 80),
            Err(Denial::NotGranted {
                host: "evil.example".into(),
                port: 80
            })
        );
        assert_eq!(
            p.check_target("http", &host("127.0.0.1"), 3001)
                .unwrap_err()
                .to_string(),
            "`127.0.0.1:3001` is not among the module's granted outbound hosts"
        );
        assert_eq!(
            p.check_target("https", &host("api.example.com"), 443),
            Ok(())
        );
        assert_eq!(
            p.check_target("ftp", &host("api.example.com"), 80),
            Err(Denial::UnsupportedScheme("ftp".into()))
        );
    }
}
