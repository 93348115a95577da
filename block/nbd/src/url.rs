//! NBD URLs as the NBD URI specification writes them:
//! `nbd://host[:port]/export` and `nbd+unix:///export?socket=PATH`.
//! TLS (`nbds`) and vsock schemes are recognised and refused.

use std::fmt;
use std::path::PathBuf;

use percent_encoding::percent_decode_str;

/// The IANA port of NBD.
pub const DEFAULT_PORT: u16 = 10809;

/// Where the server listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Address {
    Tcp { host: String, port: u16 },
    Unix(PathBuf),
}

/// A parsed NBD URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NbdUrl {
    pub address: Address,
    /// The export name; empty means the server's default export.
    pub export: String,
}

/// Whether `spec` names an NBD URL rather than a path: it starts with an
/// NBD scheme and `://`.
pub fn is_nbd_url(spec: &str) -> bool {
    spec.split_once("://").is_some_and(|(scheme, _)| {
        let s = scheme.to_ascii_lowercase();
        s == "nbd" || s == "nbds" || s.starts_with("nbd+") || s.starts_with("nbds+")
    })
}

fn decode(what: &str, s: &str) -> Result<String, String> {
    percent_decode_str(s)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| format!("the {what} is not valid UTF-8 once percent-decoded"))
}

impl NbdUrl {
    /// Parses `s`; the error says what is wrong in one line.
    pub fn parse(s: &str) -> Result<NbdUrl, String> {
        let (scheme, rest) = s.split_once("://").ok_or("not an NBD URL (expected nbd://… or nbd+unix://…)")?;
        let unix = match scheme.to_ascii_lowercase().as_str() {
            "nbd" => false,
            "nbd+unix" => true,
            "nbds" | "nbds+unix" => return Err("TLS (nbds://) is not supported; use nbd:// or nbd+unix://".into()),
            other => return Err(format!("unsupported scheme {other}:// (use nbd:// or nbd+unix://)")),
        };
        let rest = rest.split_once('#').map_or(rest, |(r, _)| r);
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        let export = decode("export name", path)?;
        if export.len() > crate::proto::MAX_STRING {
            return Err("the export name is longer than 4096 bytes".into());
        }
        let mut socket = None;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            // Unknown parameters are ignored, as the URI specification asks.
            if k == "socket" {
                socket = Some(decode("socket path", v)?);
            }
        }
        let address = if unix {
            if !authority.is_empty() {
                return Err(format!("nbd+unix:// takes no host (got {authority:?}): write nbd+unix:///EXPORT?socket=PATH"));
            }
            match socket {
                Some(p) if !p.is_empty() => Address::Unix(PathBuf::from(p)),
                _ => return Err("nbd+unix:// needs ?socket=PATH".into()),
            }
        } else {
            parse_authority(authority)?
        };
        Ok(NbdUrl { address, export })
    }
}

fn parse_authority(a: &str) -> Result<Address, String> {
    if a.contains('@') {
        return Err("user names in NBD URLs are not supported".into());
    }
    let (host, port) = if let Some(v6) = a.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or("unterminated [IPv6 address]")?;
        (host, after.strip_prefix(':'))
    } else {
        match a.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (a, None),
        }
    };
    if host.is_empty() {
        return Err("nbd:// needs a host: nbd://HOST[:PORT]/EXPORT".into());
    }
    let port = match port {
        None | Some("") => DEFAULT_PORT,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => n,
            _ => return Err(format!("bad port {p:?}")),
        },
    };
    Ok(Address::Tcp { host: host.to_string(), port })
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Tcp { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            Address::Tcp { host, port } => write!(f, "{host}:{port}"),
            Address::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_forms_of_the_uri_specification() {
        let u = NbdUrl::parse("nbd://127.0.0.1:4000/disk").unwrap();
        assert_eq!(u.address, Address::Tcp { host: "127.0.0.1".into(), port: 4000 });
        assert_eq!(u.export, "disk");
        let u = NbdUrl::parse("nbd://localhost").unwrap();
        assert_eq!(u.address, Address::Tcp { host: "localhost".into(), port: DEFAULT_PORT });
        assert_eq!(u.export, "");
        let u = NbdUrl::parse("nbd://[::1]:99/a%20b").unwrap();
        assert_eq!(u.address, Address::Tcp { host: "::1".into(), port: 99 });
        assert_eq!(u.export, "a b");
        let u = NbdUrl::parse("nbd+unix:///r0?socket=/run/x%2Fy.sock&tls=off").unwrap();
        assert_eq!(u.address, Address::Unix("/run/x/y.sock".into()));
        assert_eq!(u.export, "r0");
    }

    #[test]
    fn refuses_what_it_cannot_serve_with_a_reason() {
        for (url, why) in [
            ("nbds://h/e", "TLS"),
            ("nbd+vsock:///e", "unsupported scheme"),
            ("nbd+unix:///e", "socket=PATH"),
            ("nbd+unix://h/e?socket=/s", "takes no host"),
            ("nbd://h:0/e", "bad port"),
            ("nbd://h:x/e", "bad port"),
            ("nbd:///e", "needs a host"),
            ("nbd://u@h/e", "user names"),
            ("nbd://h/%ff", "UTF-8"),
        ] {
            let err = NbdUrl::parse(url).unwrap_err();
            assert!(err.contains(why), "{url}: {err}");
        }
    }

    #[test]
    fn tells_urls_from_paths() {
        assert!(is_nbd_url("nbd://h/e") && is_nbd_url("NBD+unix:///e?socket=s") && is_nbd_url("nbds://h"));
        assert!(!is_nbd_url("/dev/nbd0") && !is_nbd_url("disk.img") && !is_nbd_url("dir/nbd://x") && !is_nbd_url("nbdx://h"));
    }
}
