//! Platforms as the OCI image index names them: `os/architecture[/variant]`, in the words
//! Docker and BuildKit use (`linux/amd64`, `linux/arm64`, `linux/arm/v7`). What trellis knows
//! of each: whether it is valid, its BuildKit build args, and the binfmt_misc handler that
//! runs it on another architecture.

/// Architectures of the OCI image spec's platform list, with the variants each may carry.
/// Docker normalises `linux/arm64/v8` to `linux/arm64` and `linux/arm` to `linux/arm/v7`: one
/// platform has one spelling here, Docker's normal form, so two spellings of one platform
/// cannot make two builds, and what a build records is what was asked.
const ARCHITECTURES: &[(&str, &[&str])] = &[
    ("amd64", &["v2", "v3", "v4"]),
    ("arm64", &[]),
    ("arm", &["v5", "v6", "v7"]),
    ("386", &[]),
    ("ppc64le", &[]),
    ("s390x", &[]),
    ("riscv64", &[]),
    ("mips64le", &[]),
    ("loong64", &[]),
];

/// What people write for an architecture in the kernel's words, with Docker's.
const KERNEL_WORDS: &[(&str, &str)] =
    &[("x86_64", "amd64"), ("aarch64", "arm64"), ("armhf", "arm/v7"), ("i386", "386"), ("i686", "386")];

/// `Ok` for a platform trellis can build, in Docker's normal form; otherwise the help
/// saying what to write.
pub fn check(platform: &str) -> Result<(), String> {
    if platform.contains([',', ' ']) {
        return Err("one string per platform: `platforms \"linux/amd64\" \"linux/arm64\"`".into());
    }
    if platform != platform.to_ascii_lowercase() {
        return Err(format!("platforms are lower case: write \"{}\"", platform.to_ascii_lowercase()));
    }
    let parts: Vec<&str> = platform.split('/').collect();
    let (os, arch, variant) = match parts.as_slice() {
        [os, arch] => (*os, *arch, None),
        [os, arch, variant] => (*os, *arch, Some(*variant)),
        [arch] if known(arch) => return Err(format!("a platform names its OS too: write \"linux/{arch}\"")),
        _ => {
            return Err("a platform is `os/architecture[/variant]`, such as \"linux/amd64\" or \"linux/arm/v7\"".into());
        }
    };
    if os != "linux" {
        return Err(format!("trellis builds Linux images: write \"linux/{arch}\""));
    }
    let Some((_, variants)) = ARCHITECTURES.iter().find(|(a, _)| *a == arch) else {
        if let Some((_, docker)) = KERNEL_WORDS.iter().find(|(kernel, _)| *kernel == arch) {
            return Err(format!("images name this architecture as Docker does: write \"linux/{docker}\""));
        }
        let known: Vec<&str> = ARCHITECTURES.iter().map(|(a, _)| *a).collect();
        return Err(format!("the architecture is one of {}", known.join(", ")));
    };
    match (arch, variant) {
        ("arm64", Some("v8")) => Err("Docker writes linux/arm64/v8 as \"linux/arm64\": write that".into()),
        ("arm", None) => Err("Docker writes linux/arm as \"linux/arm/v7\": write that (or v6, v5)".into()),
        (_, Some(v)) if variants.is_empty() => {
            Err(format!("linux/{arch} has no variant other than this: write \"linux/{arch}\" (not /{v})"))
        }
        (_, Some(v)) if !variants.contains(&v) => {
            Err(format!("the variant of linux/{arch} is one of {}", variants.join(", ")))
        }
        _ => Ok(()),
    }
}

fn known(arch: &str) -> bool {
    ARCHITECTURES.iter().any(|(a, _)| *a == arch)
}

/// The platform of the machine trellis runs on, in Docker's words.
pub fn host() -> String {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        "loongarch64" => "loong64",
        other => other,
    };
    format!("linux/{arch}")
}

/// Whether a Dockerfile has a `FROM scratch` stage that declares an `ARG` before a `COPY` or
/// `ADD`: the classic builder cannot build that for another platform than its engine's
/// ("does not match the specified platform", moby#46294); BuildKit can.
pub fn classic_cannot_cross_build(dockerfile: &str) -> bool {
    let (mut scratch, mut arg) = (false, false);
    for line in dockerfile.lines() {
        let mut words = line.split_whitespace();
        match words.next().map(str::to_ascii_uppercase).as_deref() {
            Some("FROM") => {
                scratch =
                    words.find(|w| !w.starts_with("--")).is_some_and(|image| image.eq_ignore_ascii_case("scratch"));
                arg = false;
            }
            Some("ARG") => arg = true,
            Some("COPY" | "ADD") if scratch && arg => return true,
            _ => {}
        }
    }
    false
}

/// A valid platform's parts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform<'a> {
    pub os: &'a str,
    pub architecture: &'a str,
    pub variant: Option<&'a str>,
}

impl<'a> Platform<'a> {
    /// Splits `os/architecture[/variant]` (unchecked: see [`check`]).
    pub fn parse(platform: &'a str) -> Self {
        let mut parts = platform.splitn(3, '/');
        let os = parts.next().unwrap_or_default();
        let architecture = parts.next().unwrap_or_default();
        Self { os, architecture, variant: parts.next() }
    }

    /// The binfmt_misc handler (`/proc/sys/fs/binfmt_misc/<name>`, as Debian's
    /// qemu-user-static registers it) that runs this platform's binaries on another one.
    pub fn qemu_handler(&self) -> Option<&'static str> {
        Some(match self.architecture {
            "arm64" => "qemu-aarch64",
            "arm" => "qemu-arm",
            "386" => "qemu-i386",
            "ppc64le" => "qemu-ppc64le",
            "s390x" => "qemu-s390x",
            "riscv64" => "qemu-riscv64",
            "mips64le" => "qemu-mips64el",
            "loong64" => "qemu-loongarch64",
            "amd64" => "qemu-x86_64",
            _ => return None,
        })
    }
}

/// Whether an image recorded as `recorded` is one of platform `asked`: the same OS and
/// architecture, and the variant when `asked` names one (BuildKit records `v8` on some arm64
/// images, others none).
pub fn matches(recorded: &str, asked: &str) -> bool {
    let (recorded, asked) = (Platform::parse(recorded), Platform::parse(asked));
    recorded.os == asked.os
        && recorded.architecture == asked.architecture
        && asked.variant.is_none_or(|variant| recorded.variant == Some(variant))
}

/// The build args BuildKit defines for a build of `target` on `build` (both platforms
/// trellis checked): every builder gets them, so one Dockerfile can pick per-platform inputs
/// with `ARG TARGETARCH`.
pub fn build_args(target: &str, build: &str) -> Vec<(String, String)> {
    let mut args = Vec::with_capacity(8);
    for (prefix, platform) in [("TARGET", target), ("BUILD", build)] {
        let parts = Platform::parse(platform);
        args.push((format!("{prefix}PLATFORM"), platform.to_owned()));
        args.push((format!("{prefix}OS"), parts.os.to_owned()));
        args.push((format!("{prefix}ARCH"), parts.architecture.to_owned()));
        args.push((format!("{prefix}VARIANT"), parts.variant.unwrap_or_default().to_owned()));
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_platforms_pass_and_mistakes_say_what_to_write() {
        for ok in ["linux/amd64", "linux/arm64", "linux/arm/v7", "linux/amd64/v2", "linux/s390x"] {
            assert_eq!(check(ok), Ok(()), "{ok}");
        }
        let help = |platform: &str| check(platform).unwrap_err();
        assert_eq!(help("linux/aarch64"), "images name this architecture as Docker does: write \"linux/arm64\"");
        assert_eq!(help("windows/amd64"), "trellis builds Linux images: write \"linux/amd64\"");
        assert_eq!(help("linux/arm/v9"), "the variant of linux/arm is one of v5, v6, v7");
        assert_eq!(
            help("linux/s390x/v1"),
            "linux/s390x has no variant other than this: write \"linux/s390x\" (not /v1)"
        );
        assert_eq!(help("linux/arm64/v8"), "Docker writes linux/arm64/v8 as \"linux/arm64\": write that");
        assert_eq!(help("linux/arm"), "Docker writes linux/arm as \"linux/arm/v7\": write that (or v6, v5)");
        assert_eq!(help("Linux/ARM64"), "platforms are lower case: write \"linux/arm64\"");
        assert_eq!(help("arm64"), "a platform names its OS too: write \"linux/arm64\"");
        assert!(help("linux/amd64,linux/arm64").starts_with("one string per platform"));
        assert!(help("linux/amd64 linux/arm64").starts_with("one string per platform"));
        assert!(help("amd").starts_with("a platform is `os/architecture"));
        assert!(help("linux/sparc").starts_with("the architecture is one of amd64, arm64"));
    }

    #[test]
    fn a_variant_matters_only_when_asked_for() {
        assert!(matches("linux/arm64/v8", "linux/arm64"));
        assert!(matches("linux/arm64", "linux/arm64"));
        assert!(!matches("linux/arm64", "linux/arm64/v8"));
        assert!(!matches("linux/amd64", "linux/arm64"));
        assert!(!matches("linux/arm/v6", "linux/arm/v7"));
    }

    #[test]
    fn build_args_follow_buildkit() {
        let args: std::collections::HashMap<_, _> = build_args("linux/arm/v7", "linux/amd64").into_iter().collect();
        assert_eq!(args["TARGETPLATFORM"], "linux/arm/v7");
        assert_eq!(args["TARGETOS"], "linux");
        assert_eq!(args["TARGETARCH"], "arm");
        assert_eq!(args["TARGETVARIANT"], "v7");
        assert_eq!(args["BUILDPLATFORM"], "linux/amd64");
        assert_eq!(args["BUILDARCH"], "amd64");
        assert_eq!(args["BUILDVARIANT"], "");
        assert_eq!(args.len(), 8);
    }
}
