//! The egress policy: which destinations outbound HTTP may reach, for
//! webhooks and connectors alike.
//!
//! Public addresses are always allowed. Special addresses ([`special`]:
//! loopback, private, link-local and cloud metadata, CGNAT, documentation,
//! ...) are refused unless the operator lists them in `[egress] allow`, for
//! every tenant, or in `[egress.tenants.<name>] allow`, for one tenant.
//!
//! An entry judges what the **URL names**, never what DNS answers:
//!
//! - an address or CIDR block (`127.0.0.1`, `10.0.0.0/8`, `::1`) allows URLs
//!   whose host is an address literal in it (`http://10.1.2.3/hook`);
//! - a host name (`hooks.internal`) or every name under a domain
//!   (`*.svc.cluster.local`) allows URLs with that host, whatever addresses
//!   it resolves to.
//!
//! Any other host name may connect only to the public addresses it resolves
//! to; the others are dropped, and a name with none left is refused. So a
//! tenant cannot reach an opened block through a DNS name it controls, and
//! `localhost` stays refused when only `127.0.0.1` is allowed. Callers
//! connect to exactly the addresses [`AllowList::resolve`] returns, so a
//! second DNS answer cannot redirect a checked request (no rebinding).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

use serde::Deserialize;

use super::cidr::{Cidr, CidrError};
use super::special::{Special, special};

/// The `[egress]` section of the config file.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EgressConfig {
    /// Addresses, CIDR blocks, host names and `*.domain` wildcards every
    /// tenant's webhooks and connectors may reach even though they are not
    /// public (see the module docs).
    pub allow: Vec<String>,
    /// More entries for one tenant each, added to `allow`.
    pub tenants: BTreeMap<String, TenantEgressConfig>,
}

/// `[egress.tenants.<name>]`: what one tenant may reach besides `[egress] allow`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TenantEgressConfig {
    /// Entries as in `[egress] allow`.
    pub allow: Vec<String>,
}

/// One allow-list entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    /// URLs naming an address in the block.
    Block(Cidr),
    /// URLs naming this host (lower-case, without a trailing dot).
    Host(String),
    /// URLs naming a host strictly under this domain (`*.domain`).
    Domain(String),
}

/// Why a text is not an allow-list entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    /// Looks like an address or block but is not a valid one.
    #[error("{0}")]
    Block(CidrError),
    /// Neither an address, a block, a host name nor `*.domain`.
    #[error(
        "is not an IP address, a CIDR block, a host name or *.domain \
         (a host name is letters, digits, '-' and '_' in dot-separated labels)"
    )]
    Host,
}

impl FromStr for Entry {
    type Err = EntryError;

    fn from_str(text: &str) -> Result<Self, EntryError> {
        let text = text.trim();
        match text.parse::<Cidr>() {
            Ok(block) => return Ok(Self::Block(block)),
            // Anything with a ':' or '/' or made of digits and dots was meant
            // as an address: say what is wrong with it as one.
            Err(e)
                if text.contains([':', '/', '['])
                    || text.bytes().all(|b| b.is_ascii_digit() || b == b'.') =>
            {
                return Err(EntryError::Block(e));
            }
            Err(_) => {}
        }
        let (domain, name) = match text.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let name = normalise_host(name);
        if !is_host_name(&name) {
            return Err(EntryError::Host);
        }
        Ok(if domain {
            Self::Domain(name)
        } else {
            Self::Host(name)
        })
    }
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Block(block) => block.fmt(f),
            Self::Host(host) => f.write_str(host),
            Self::Domain(domain) => write!(f, "*.{domain}"),
        }
    }
}

/// Lower-case, without one trailing dot (`Hooks.Internal.` is `hooks.internal`).
fn normalise_host(host: &str) -> String {
    host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase()
}

/// A DNS name as a URL carries it (IDNs arrive as punycode): labels of
/// letters, digits, `-` and `_`, at most 253 characters.
fn is_host_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// The destinations one tenant's outbound requests may reach beyond the
/// public internet. Shared as `Arc<AllowList>`; the default allows nothing
/// special.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllowList {
    entries: Vec<Entry>,
}

/// A destination egress refuses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forbidden {
    /// The URL's host, when it is a name (then `addr` is what it resolved to).
    pub host: Option<String>,
    /// The refused address (the first, when a name resolved to several).
    pub addr: IpAddr,
    /// Why the address is not public.
    pub reason: Special,
}

impl fmt::Display for Forbidden {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Some(host) => write!(
                f,
                "{host} resolves to {}, which is {}; egress does not allow it for this host",
                self.addr, self.reason
            ),
            None => write!(
                f,
                "{} is {}; egress does not allow it",
                self.addr, self.reason
            ),
        }
    }
}

impl std::error::Error for Forbidden {}

/// Why [`AllowList::resolve`] found no address to connect to.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The destination is refused.
    #[error(transparent)]
    Forbidden(#[from] Forbidden),
    /// The name did not resolve.
    #[error("DNS lookup of {host} failed: {source}")]
    Lookup {
        /// The name.
        host: String,
        /// What the resolver said.
        source: std::io::Error,
    },
}

impl AllowList {
    /// A list of already parsed entries.
    pub fn new(entries: Vec<Entry>) -> Self {
        Self { entries }
    }

    /// Parses `entries` (as in `[egress] allow`); for tests and tools.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Self, EntryError> {
        entries
            .iter()
            .map(|entry| entry.as_ref().parse())
            .collect::<Result<_, _>>()
            .map(Self::new)
    }

    /// The entries, in order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Checks an address a URL names literally: public, or in an allowed block.
    pub fn check_address(&self, ip: IpAddr) -> Result<(), Forbidden> {
        // `::ffff:10.0.0.1` is 10.0.0.1 on the wire.
        let ip = ip.to_canonical();
        let Some(reason) = special(ip) else {
            return Ok(());
        };
        let allowed = self.entries.iter().any(|entry| match entry {
            Entry::Block(block) => block.contains(ip),
            Entry::Host(_) | Entry::Domain(_) => false,
        });
        if allowed {
            Ok(())
        } else {
            Err(Forbidden {
                host: None,
                addr: ip,
                reason,
            })
        }
    }

    /// Whether the operator listed this host name (or a domain above it), so
    /// that every address it resolves to may be reached.
    pub fn trusts_name(&self, host: &str) -> bool {
        let host = normalise_host(host);
        self.entries.iter().any(|entry| match entry {
            Entry::Host(name) => *name == host,
            Entry::Domain(domain) => host
                .strip_suffix(domain.as_str())
                .is_some_and(|rest| rest.len() > 1 && rest.ends_with('.')),
            Entry::Block(_) => false,
        })
    }

    /// Keeps the addresses a URL naming `host` may connect to: all of them
    /// for a listed name, else the public ones. Refused when none is left.
    pub fn admit(
        &self,
        host: &str,
        resolved: Vec<SocketAddr>,
    ) -> Result<Vec<SocketAddr>, Forbidden> {
        if self.trusts_name(host) {
            return Ok(resolved);
        }
        let mut refused = None;
        let admitted: Vec<SocketAddr> = resolved
            .into_iter()
            .filter(|addr| match special(addr.ip().to_canonical()) {
                None => true,
                Some(reason) => {
                    refused.get_or_insert((addr.ip(), reason));
                    false
                }
            })
            .collect();
        match refused {
            Some((addr, reason)) if admitted.is_empty() => Err(Forbidden {
                host: Some(host.to_owned()),
                addr,
                reason,
            }),
            _ => Ok(admitted),
        }
    }

    /// The addresses a request to `host:port` may connect to: an address
    /// literal (with or without brackets) checked by [`Self::check_address`],
    /// or a name resolved by the system and filtered by [`Self::admit`].
    /// The caller connects only to these.
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, ResolveError> {
        let bare = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if let Ok(ip) = bare.parse::<IpAddr>() {
            self.check_address(ip)?;
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let resolved: Vec<SocketAddr> = tokio::net::lookup_host((bare, port))
            .await
            .map_err(|source| ResolveError::Lookup {
                host: bare.to_owned(),
                source,
            })?
            .collect();
        Ok(self.admit(bare, resolved)?)
    }
}

/// The whole egress policy: the list for every tenant, and the longer list
/// of each tenant with its own section. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct EgressPolicy {
    all: Arc<AllowList>,
    /// Each holds `all`'s entries followed by the tenant's own.
    tenants: Arc<HashMap<String, Arc<AllowList>>>,
}

/// A config entry that is not valid, named by its key
/// (`egress.allow[2]`, `egress.tenants.acme.allow[0]`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {value:?} {error}")]
pub struct EgressConfigProblem {
    /// Where the entry is.
    pub key: String,
    /// The entry as written.
    pub value: String,
    /// What is wrong with it.
    pub error: EntryError,
}

/// Every invalid entry of an egress configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct EgressConfigError(pub Vec<EgressConfigProblem>);

impl EgressPolicy {
    /// A policy with one list for every tenant.
    pub fn new(all: AllowList) -> Self {
        Self {
            all: Arc::new(all),
            tenants: Arc::default(),
        }
    }

    /// A policy allowing `entries` for every tenant (for tests and tools).
    pub fn allowing<S: AsRef<str>>(entries: &[S]) -> Result<Self, EntryError> {
        AllowList::parse(entries).map(Self::new)
    }

    /// Builds the policy from the config section, plus entries from other
    /// keys that mean the same (a deprecated alias), each given with its key.
    /// Reports every invalid entry.
    pub fn from_config(
        config: &EgressConfig,
        aliases: &[(&str, &[String])],
    ) -> Result<Self, EgressConfigError> {
        let mut problems = Vec::new();
        let mut parse = |key: &str, values: &[String], into: &mut Vec<Entry>| {
            for (i, value) in values.iter().enumerate() {
                match value.parse() {
                    Ok(entry) => into.push(entry),
                    Err(error) => problems.push(EgressConfigProblem {
                        key: format!("{key}[{i}]"),
                        value: value.clone(),
                        error,
                    }),
                }
            }
        };
        let mut all = Vec::new();
        parse("egress.allow", &config.allow, &mut all);
        for (key, values) in aliases {
            parse(key, values, &mut all);
        }
        let mut tenants = HashMap::new();
        for (tenant, section) in &config.tenants {
            let mut entries = all.clone();
            parse(
                &format!("egress.tenants.{tenant}.allow"),
                &section.allow,
                &mut entries,
            );
            tenants.insert(tenant.clone(), Arc::new(AllowList::new(entries)));
        }
        if !problems.is_empty() {
            return Err(EgressConfigError(problems));
        }
        Ok(Self {
            all: Arc::new(AllowList::new(all)),
            tenants: Arc::new(tenants),
        })
    }

    /// What `tenant`'s requests may reach.
    pub fn for_tenant(&self, tenant: &str) -> Arc<AllowList> {
        self.tenants.get(tenant).unwrap_or(&self.all).clone()
    }

    /// What every tenant's requests may reach.
    pub fn for_all(&self) -> Arc<AllowList> {
        self.all.clone()
    }

    /// The tenants with a list of their own, and that list.
    pub fn tenant_lists(&self) -> impl Iterator<Item = (&str, &Arc<AllowList>)> {
        self.tenants
            .iter()
            .map(|(name, list)| (name.as_str(), list))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|a| SocketAddr::new(ip(a), 80)).collect()
    }

    #[test]
    fn entries_parse_into_blocks_hosts_and_domains() {
        let cases: &[(&str, &str)] = &[
            ("127.0.0.1", "127.0.0.1/32"),
            ("10.0.0.0/8", "10.0.0.0/8"),
            ("::1", "::1/128"),
            ("[::1]", "::1/128"),
            ("fd00::/8", "fd00::/8"),
            ("Hooks.Internal", "hooks.internal"),
            ("hooks.internal.", "hooks.internal"),
            ("localhost", "localhost"),
            ("*.svc.cluster.local", "*.svc.cluster.local"),
            ("my_host-1", "my_host-1"),
        ];
        for &(text, shown) in cases {
            let entry: Entry = text.parse().unwrap();
            assert_eq!(entry.to_string(), shown, "{text}");
        }
        let bad: &[(&str, &str)] = &[
            ("10.0.0.0/33", "has a prefix length that is not 0 to 32"),
            (
                "10.0.0.1/8",
                "has bits set after the prefix; the block is 10.0.0.0/8",
            ),
            ("300.1.1.1", "is not an IP address"),
            ("10.0.0", "is not an IP address"),
            ("fe80::/x", "has a prefix length that is not 0 to 128"),
            ("[::1", "is not an IP address"),
            ("", "is not an IP address"),
            ("hooks internal", "is not an IP address, a CIDR block"),
            ("*.", "is not an IP address, a CIDR block"),
            ("*", "is not an IP address, a CIDR block"),
            ("a..b", "is not an IP address, a CIDR block"),
            ("http://hooks.internal", "is not an IP address"),
        ];
        for &(text, reason) in bad {
            let error = text.parse::<Entry>().unwrap_err().to_string();
            assert!(error.starts_with(reason), "{text}: {error}");
        }
    }

    #[test]
    fn address_literals_need_a_block() {
        let list = AllowList::parse(&["127.0.0.1", "10.0.0.0/8", "::1"]).unwrap();
        for allowed in [
            "127.0.0.1",
            "10.255.0.1",
            "::1",
            "::ffff:127.0.0.1",
            "8.8.8.8",
        ] {
            assert_eq!(list.check_address(ip(allowed)), Ok(()), "{allowed}");
        }
        for refused in [
            "127.0.0.2",
            "169.254.169.254",
            "192.168.0.1",
            "fe80::1",
            "64:ff9b::7f00:1",
        ] {
            assert!(list.check_address(ip(refused)).is_err(), "{refused}");
        }
        let refused = AllowList::default()
            .check_address(ip("169.254.169.254"))
            .unwrap_err();
        assert_eq!(
            refused.to_string(),
            "169.254.169.254 is in 169.254.0.0/16 (link-local, incl. cloud metadata); \
             egress does not allow it"
        );
    }

    #[test]
    fn names_keep_public_answers_unless_listed() {
        let list = AllowList::parse(&["127.0.0.1", "hooks.internal", "*.svc.local"]).unwrap();
        // A listed name may resolve anywhere.
        let all = addrs(&["10.0.0.5", "127.0.0.1"]);
        assert_eq!(list.admit("hooks.internal", all.clone()).unwrap(), all);
        assert_eq!(list.admit("HOOKS.internal.", all.clone()).unwrap(), all);
        assert_eq!(list.admit("a.b.svc.local", all.clone()).unwrap(), all);
        // Not the domain itself, nor a name that only ends the same way.
        for name in ["svc.local", "evilsvc.local", "hooks.internal.evil"] {
            assert!(list.admit(name, all.clone()).is_err(), "{name}");
        }
        // An allowed block does not open it to names resolving into it.
        let refused = list
            .admit("localhost", addrs(&["127.0.0.1", "::1"]))
            .unwrap_err();
        assert_eq!(refused.host.as_deref(), Some("localhost"));
        assert_eq!(refused.addr, ip("127.0.0.1"));
        assert!(
            refused
                .to_string()
                .starts_with("localhost resolves to 127.0.0.1, which is in 127.0.0.0/8 (loopback)"),
            "{refused}"
        );
        // Mixed answers: only the public addresses are kept.
        let kept = list
            .admit(
                "mixed.example",
                addrs(&["10.0.0.1", "93.184.216.34", "::ffff:127.0.0.1"]),
            )
            .unwrap();
        assert_eq!(kept, addrs(&["93.184.216.34"]));
        // No answer at all is not a refusal (the connection fails instead).
        assert_eq!(list.admit("nothing.example", Vec::new()).unwrap(), []);
    }

    #[tokio::test]
    async fn resolution_checks_literals_and_dns_answers() {
        let open = AllowList::parse(&["127.0.0.1", "::1"]).unwrap();
        let closed = AllowList::default();
        assert_eq!(
            open.resolve("127.0.0.1", 8080).await.unwrap(),
            ["127.0.0.1:8080".parse().unwrap()]
        );
        assert_eq!(
            open.resolve("[::1]", 80).await.unwrap(),
            ["[::1]:80".parse().unwrap()]
        );
        for host in ["127.0.0.1", "[::1]", "169.254.169.254"] {
            assert!(
                matches!(
                    closed.resolve(host, 80).await,
                    Err(ResolveError::Forbidden(_))
                ),
                "{host}"
            );
        }
        // `localhost` resolves to loopback only: refused, even with the
        // loopback addresses allowed.
        for list in [&open, &closed] {
            assert!(matches!(
                list.resolve("localhost", 80).await,
                Err(ResolveError::Forbidden(Forbidden { host: Some(_), .. }))
            ));
        }
        let named = AllowList::parse(&["localhost"]).unwrap();
        let got = named.resolve("localhost", 80).await.unwrap();
        assert!(
            !got.is_empty() && got.iter().all(|a| a.ip().is_loopback()),
            "{got:?}"
        );
    }

    #[test]
    fn config_builds_per_tenant_lists_and_names_bad_keys() {
        let config: EgressConfig = toml::from_str(
            r#"
            allow = ["127.0.0.1"]
            [tenants.acme]
            allow = ["10.0.0.0/8", "hooks.acme.internal"]
            "#,
        )
        .unwrap();
        let legacy = vec!["192.168.1.10".to_owned()];
        let policy =
            EgressPolicy::from_config(&config, &[("plugins.allow_private_hosts", &legacy)])
                .unwrap();
        let acme = policy.for_tenant("acme");
        let other = policy.for_tenant("globex");
        for list in [&acme, &other] {
            assert!(list.check_address(ip("127.0.0.1")).is_ok());
            assert!(list.check_address(ip("192.168.1.10")).is_ok());
        }
        assert!(acme.check_address(ip("10.1.2.3")).is_ok());
        assert!(other.check_address(ip("10.1.2.3")).is_err());
        assert!(acme.trusts_name("hooks.acme.internal"));
        assert!(!other.trusts_name("hooks.acme.internal"));
        assert_eq!(policy.tenant_lists().count(), 1);
        assert_eq!(*policy.for_all(), *other);

        let config: EgressConfig = toml::from_str(
            r#"
            allow = ["127.0.0.1", "10.0.0.0/33"]
            [tenants.acme]
            allow = ["not a host"]
            "#,
        )
        .unwrap();
        let legacy = vec!["ok".to_owned(), "::1/200".to_owned()];
        let error = EgressPolicy::from_config(&config, &[("plugins.allow_private_hosts", &legacy)])
            .unwrap_err();
        let keys: Vec<&str> = error.0.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "egress.allow[1]",
                "plugins.allow_private_hosts[1]",
                "egress.tenants.acme.allow[0]"
            ]
        );
        assert!(
            error.to_string().starts_with(
                "egress.allow[1]: \"10.0.0.0/33\" has a prefix length that is not 0 to 32; "
            ),
            "{error}"
        );
        assert!(toml::from_str::<EgressConfig>("deny = []").is_err());
        assert!(toml::from_str::<EgressConfig>("[tenants.acme]\nallows = []").is_err());
    }

    #[test]
    fn the_default_policy_allows_nothing_special() {
        let policy = EgressPolicy::default();
        assert!(policy.for_tenant("anyone").entries().is_empty());
        assert!(policy.for_all().check_address(ip("127.0.0.1")).is_err());
        assert!(policy.for_all().check_address(ip("1.1.1.1")).is_ok());
    }
}
