//! Choosing the accelerator: KVM only where it can really run a guest.
//!
//! `/dev/kvm` existing is not enough: some hosts expose a paravirtual KVM (PVM) that
//! cannot run a stock Linux guest. KVM is chosen only when the CPU advertises hardware
//! virtualisation (vmx or svm in /proc/cpuinfo), a kvm_intel or kvm_amd module is
//! loaded, and /dev/kvm opens read-write. Everything else runs under TCG.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }

    /// The accelerator this host can really use.
    pub fn detect() -> Accel {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let module_loaded = ["/sys/module/kvm_intel", "/sys/module/kvm_amd"]
            .iter()
            .any(|m| std::path::Path::new(m).exists());
        let dev_usable = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok();
        Self::choose(&cpuinfo, module_loaded, dev_usable)
    }

    fn choose(cpuinfo: &str, module_loaded: bool, dev_usable: bool) -> Accel {
        let hw_virt = cpuinfo
            .lines()
            .filter(|l| l.starts_with("flags"))
            .flat_map(|l| l.split_whitespace())
            .any(|f| f == "vmx" || f == "svm");
        if hw_virt && module_loaded && dev_usable {
            Accel::Kvm
        } else {
            Accel::Tcg
        }
    }
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Accel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "kvm" => Ok(Accel::Kvm),
            "tcg" => Ok(Accel::Tcg),
            other => Err(format!("unknown accelerator {other:?} (use kvm or tcg)")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kvm_needs_hardware_virtualisation_a_module_and_the_device() {
        let vmx = "processor: 0\nflags\t\t: fpu vme vmx sse\n";
        let none = "processor: 0\nflags\t\t: fpu vme sse\n";
        assert_eq!(Accel::choose(vmx, true, true), Accel::Kvm);
        assert_eq!(
            Accel::choose(none, true, true),
            Accel::Tcg,
            "PVM host: /dev/kvm but no vmx"
        );
        assert_eq!(Accel::choose(vmx, false, true), Accel::Tcg);
        assert_eq!(Accel::choose(vmx, true, false), Accel::Tcg);
    }

    #[test]
    fn parses_and_prints() {
        assert_eq!("tcg".parse::<Accel>().unwrap(), Accel::Tcg);
        assert!("xen".parse::<Accel>().is_err());
        assert_eq!(serde_json::to_string(&Accel::Kvm).unwrap(), "\"kvm\"");
    }
}
