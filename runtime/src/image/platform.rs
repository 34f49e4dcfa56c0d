//! Platforms as the Docker API's `platform` parameter names them (`linux/amd64`,
//! `linux/arm64/v8`, `arm64`), normalised as containerd's `platforms` package does: `x86_64`
//! is `amd64`, `aarch64` is `arm64`, and arm64's only variant, `v8`, is the same as none.
//!
//! A pull picks the entry of an index that matches the platform asked for, else the engine's
//! own ([`Platform::native`]: the architecture the guest runs, so an arm64 guest pulls arm64).
//! A container asked for with a platform its local image is not of is refused as "not found"
//! (dockerd's answer), which makes the docker CLI pull that platform and create it again.

use std::fmt;

use crate::model::go_arch;

/// An OS, architecture and variant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

/// A `platform` value that names no platform.
#[derive(Debug, thiserror::Error)]
#[error("invalid platform {0:?}: {1}")]
pub struct BadPlatform(pub String, pub &'static str);

/// `x86_64` → `amd64` and the like: the names Go's runtime (and so OCI) uses.
fn normal_arch(arch: &str) -> String {
    match arch {
        "x86_64" | "x86-64" => "amd64".into(),
        "aarch64" => "arm64".into(),
        "i686" | "i586" | "i486" => "386".into(),
        other => other.to_ascii_lowercase(),
    }
}

impl Platform {
    /// The engine's own: `linux/<the architecture it runs on>`.
    pub fn native() -> Platform {
        Platform { os: "linux".into(), architecture: go_arch().into(), variant: None }
    }

    /// `os/arch[/variant]`, or an architecture alone (Linux taken).
    pub fn parse(s: &str) -> Result<Platform, BadPlatform> {
        let parts: Vec<&str> = s.trim().split('/').collect();
        let bad = |why| BadPlatform(s.to_owned(), why);
        if parts.iter().any(|p| p.is_empty()) {
            return Err(bad("an empty part"));
        }
        let (os, arch, variant) = match parts[..] {
            [arch] if arch != "linux" => ("linux", arch, None),
            [os, arch] => (os, arch, None),
            [os, arch, variant] => (os, arch, Some(variant)),
            _ => return Err(bad("give os/architecture[/variant], e.g. linux/amd64")),
        };
        if os != "linux" {
            return Err(bad("this engine runs Linux containers only"));
        }
        let architecture = normal_arch(arch);
        let variant = variant.map(str::to_ascii_lowercase).filter(|v| !(architecture == "arm64" && v == "v8"));
        Ok(Platform { os: os.into(), architecture, variant })
    }

    /// Whether an index entry's or image config's platform is this one. A variant that this
    /// platform does not name matches any (`linux/arm` takes v7 as dockerd does).
    pub fn matches(&self, os: &str, architecture: &str, variant: Option<&str>) -> bool {
        // arm64's v8 is arm64 with no variant named.
        let variant = variant.filter(|v| !v.is_empty() && (normal_arch(architecture) != "arm64" || *v != "v8"));
        os == self.os
            && normal_arch(architecture) == self.architecture
            && (self.variant.is_none() || variant == self.variant.as_deref())
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platforms_parse_and_normalise() {
        let p = |s: &str| Platform::parse(s).unwrap().to_string();
        assert_eq!(p("linux/amd64"), "linux/amd64");
        assert_eq!(p("linux/x86_64"), "linux/amd64");
        assert_eq!(p("aarch64"), "linux/arm64");
        assert_eq!(p("linux/arm64/v8"), "linux/arm64");
        assert_eq!(p("linux/arm/v7"), "linux/arm/v7");
        for bad in ["", "linux", "linux/", "windows/amd64", "linux/amd64/v1/x"] {
            assert!(Platform::parse(bad).is_err(), "{bad:?}");
        }
        let e = Platform::parse("windows/amd64").unwrap_err().to_string();
        assert_eq!(e, "invalid platform \"windows/amd64\": this engine runs Linux containers only");
        assert_eq!(Platform::native().to_string(), format!("linux/{}", go_arch()));
    }

    #[test]
    fn entries_match_by_os_architecture_and_variant() {
        let arm64 = Platform::parse("linux/arm64").unwrap();
        assert!(arm64.matches("linux", "arm64", Some("v8")));
        assert!(arm64.matches("linux", "arm64", None));
        assert!(!arm64.matches("linux", "amd64", None));
        assert!(!arm64.matches("windows", "arm64", None));
        let arm = Platform::parse("linux/arm").unwrap();
        assert!(arm.matches("linux", "arm", Some("v7")));
        let v6 = Platform::parse("linux/arm/v6").unwrap();
        assert!(!v6.matches("linux", "arm", Some("v7")));
        assert!(Platform::parse("amd64").unwrap().matches("linux", "x86_64", Some("")));
    }
}
