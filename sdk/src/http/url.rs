//! Splitting an absolute `http`/`https` URL into the parts `wasi:http` asks for (scheme,
//! authority, path with query), and a form of it that is safe to put in an error message.
//! It accepts only what a request can be sent to; it does not normalise or resolve.

/// The scheme of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scheme {
    Http,
    Https,
}

/// Where a request goes, in the parts `wasi:http` takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub(crate) scheme: Scheme,
    /// `host` or `host:port`; IPv6 hosts keep their brackets.
    pub(crate) authority: String,
    /// Starts with `/`; includes `?query` if there was one; never the fragment.
    pub(crate) path_with_query: String,
}

impl Target {
    /// The host part of the authority, without the port.
    pub(crate) fn host(&self) -> &str {
        host_of(&self.authority)
    }
}

/// Parses `url`, or says what is wrong with it.
pub(crate) fn parse(url: &str) -> Result<Target, String> {
    if let Some(bad) = url.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "URL contains {bad:?}; percent-encode spaces and control characters"
        ));
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err("not an absolute URL: expected `http://` or `https://`".to_owned());
    };
    let scheme = if scheme.eq_ignore_ascii_case("http") {
        Scheme::Http
    } else if scheme.eq_ignore_ascii_case("https") {
        Scheme::Https
    } else {
        return Err(format!(
            "unsupported scheme `{scheme}`: only http and https"
        ));
    };
    let rest = rest
        .split_once('#')
        .map_or(rest, |(before, _fragment)| before);
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path_with_query) = rest.split_at(authority_end);
    check_authority(authority)?;
    let path_with_query = match path_with_query.as_bytes().first() {
        None => "/".to_owned(),
        Some(b'?') => format!("/{path_with_query}"),
        Some(_) => path_with_query.to_owned(),
    };
    Ok(Target {
        scheme,
        authority: authority.to_owned(),
        path_with_query,
    })
}

/// `url` without its query, fragment and credentials, for error messages: query strings
/// often carry API keys, and errors end up in logs and execution records.
pub(crate) fn redact(url: &str) -> String {
    let end = url.find(['?', '#']).unwrap_or(url.len());
    let url = &url[..end];
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let authority_end = rest.find('/').unwrap_or(rest.len());
            let (authority, path) = rest.split_at(authority_end);
            let authority = authority
                .rsplit_once('@')
                .map_or(authority, |(_credentials, host)| host);
            format!("{scheme}://{authority}{path}")
        }
        None => url.to_owned(),
    }
}

fn check_authority(authority: &str) -> Result<(), String> {
    if authority.is_empty() {
        return Err("the URL has no host".to_owned());
    }
    if authority.contains('@') {
        return Err(
            "credentials in the URL are not supported; send an `authorization` header instead"
                .to_owned(),
        );
    }
    let host = host_of(authority);
    if host.is_empty() || host == "[]" {
        return Err("the URL has no host".to_owned());
    }
    if host.starts_with('[') != host.ends_with(']') {
        return Err(format!("malformed IPv6 host `{host}`"));
    }
    let port = &authority[host.len()..];
    if let Some(port) = port.strip_prefix(':') {
        if port.is_empty() || port.parse::<u16>().is_err() {
            return Err(format!("`{port}` is not a port number (0 to 65535)"));
        }
    } else if !port.is_empty() {
        return Err(format!("malformed host `{authority}`"));
    }
    Ok(())
}

/// `authority` up to its port: `[::1]:80` → `[::1]`, `a.example:8080` → `a.example`.
fn host_of(authority: &str) -> &str {
    if authority.starts_with('[') {
        return authority
            .find(']')
            .map_or(authority, |end| &authority[..=end]);
    }
    authority
        .rsplit_once(':')
        .map_or(authority, |(host, _port)| host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(url: &str) -> (Scheme, String, String) {
        let target = parse(url).unwrap();
        (target.scheme, target.authority, target.path_with_query)
    }

    fn problem(url: &str) -> String {
        parse(url).unwrap_err()
    }

    #[test]
    fn splits_scheme_authority_and_path_with_query() {
        assert_eq!(
            target("https://api.example.com/v1/items?page=2"),
            (
                Scheme::Https,
                "api.example.com".to_owned(),
                "/v1/items?page=2".to_owned()
            )
        );
        assert_eq!(
            target("HTTP://127.0.0.1:8080"),
            (Scheme::Http, "127.0.0.1:8080".to_owned(), "/".to_owned())
        );
        assert_eq!(
            target("http://[::1]:9000?x=1#top"),
            (Scheme::Http, "[::1]:9000".to_owned(), "/?x=1".to_owned())
        );
        assert_eq!(target("http://h/a#frag").2, "/a");
    }

    #[test]
    fn the_host_leaves_out_the_port() {
        assert_eq!(parse("http://a.example:81/").unwrap().host(), "a.example");
        assert_eq!(parse("http://a.example/").unwrap().host(), "a.example");
        assert_eq!(parse("http://[::1]:81/").unwrap().host(), "[::1]");
        assert_eq!(parse("http://[::1]/").unwrap().host(), "[::1]");
    }

    #[test]
    fn refuses_what_cannot_be_sent() {
        assert!(problem("api.example.com/x").contains("absolute URL"));
        assert!(problem("ftp://example.com/").contains("unsupported scheme `ftp`"));
        assert!(problem("http:///path").contains("no host"));
        assert!(problem("http://:80/").contains("no host"));
        assert!(problem("http://user:pw@example.com/").contains("authorization"));
        assert!(problem("http://example.com:http/").contains("not a port"));
        assert!(problem("http://example.com:99999/").contains("not a port"));
        assert!(problem("http://example.com:/").contains("not a port"));
        assert!(problem("http://[::1/").contains("IPv6"));
        assert!(problem("http://[::1]x/").contains("malformed host"));
        assert!(problem("http://example.com/a b").contains("percent-encode"));
    }

    #[test]
    fn redaction_drops_the_query_the_fragment_and_credentials() {
        assert_eq!(
            redact("https://api.example.com/v1/x?api_key=secret#f"),
            "https://api.example.com/v1/x"
        );
        assert_eq!(
            redact("https://user:pw@api.example.com/a"),
            "https://api.example.com/a"
        );
        assert_eq!(redact("http://h:1"), "http://h:1");
        assert_eq!(redact("not a url?token=x"), "not a url");
    }
}
