//! The URL scheme a request is served under (`wsgi.url_scheme`) and the
//! one fact that follows from it everywhere: its default port.

use std::fmt;

/// `http` or `https`: the only schemes a WSGI request can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scheme {
    #[default]
    Http,
    Https,
}

impl Scheme {
    /// Exactly `http` or `https` (callers lower-case what clients send).
    pub fn parse(text: &str) -> Option<Scheme> {
        match text {
            "http" => Some(Scheme::Http),
            "https" => Some(Scheme::Https),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }

    /// [`Scheme::default_port`] as the environ and `Host` values spell it.
    pub fn default_port_text(self) -> &'static str {
        match self {
            Scheme::Http => "80",
            Scheme::Https => "443",
        }
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_scheme_knows_its_default_port() {
        for scheme in [Scheme::Http, Scheme::Https] {
            assert_eq!(Scheme::parse(scheme.as_str()), Some(scheme));
            assert_eq!(
                scheme.default_port_text(),
                scheme.default_port().to_string()
            );
        }
        assert_eq!(Scheme::Https.default_port(), 443);
        assert_eq!(Scheme::parse("HTTP"), None);
        assert_eq!(Scheme::parse("ftp"), None);
    }
}
