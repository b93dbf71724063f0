//! Parsers of command-line values: sizes, CPU shares, counts and environment variables.
//!
//! Each returns, on failure, the text clap puts after `invalid value 'X' for '--flag'`:
//! what was expected, with examples. The bounds are those the API documents, so a value
//! the server would refuse is refused here first, with a better message.

/// Largest memory limit the API accepts: 2^50 bytes (1 PiB).
pub const MAX_MEMORY_BYTES: u64 = 1 << 50;
/// Largest CPU limit the API accepts, in thousandths of a core.
pub const MAX_CPU_MILLIS: u32 = 1_048_576;
/// Largest pids limit the API accepts (the kernel's pid limit).
pub const MAX_PIDS: u32 = 4_194_304;
/// Longest environment variable name the API accepts, in bytes.
pub const MAX_ENV_NAME: usize = 256;

const CPU_TOO_LARGE: &str = "too large: the most is 1048.576 cores";
const SIZE_EXPECTED: &str = "expected a size like 512M, 2G or 1048576";

/// A size in bytes: a whole number, optionally followed by a binary unit.
///
/// `K`, `M`, `G`, `T` (also `k`, `m`, `g`, `t`, and with `i`, `B` or `iB` after them:
/// `Ki`, `KiB`, `KB`...) are powers of 1024; a bare number or one ending in `B` is in
/// bytes. There is no decimal (power of 1000) unit: `MB` means MiB here, as in `free`
/// and `ls -h`. The result must be at least 1 byte.
pub fn size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(digits_end);
    if number.is_empty() {
        return Err(SIZE_EXPECTED.to_string());
    }
    let shift = match unit.trim_start() {
        "" | "B" => 0,
        u => {
            let mut chars = u.chars();
            let prefix = chars.next().map(|c| c.to_ascii_uppercase());
            let rest = chars.as_str();
            let shift = match prefix {
                Some('K') => 10,
                Some('M') => 20,
                Some('G') => 30,
                Some('T') => 40,
                _ => return Err(SIZE_EXPECTED.to_string()),
            };
            if !matches!(rest, "" | "i" | "B" | "iB") {
                return Err(SIZE_EXPECTED.to_string());
            }
            shift
        }
    };
    let value: u64 = number
        .parse()
        .map_err(|_| format!("too large: {SIZE_EXPECTED}"))?;
    let bytes = value
        .checked_mul(1u64 << shift)
        .ok_or_else(|| format!("too large: {SIZE_EXPECTED}"))?;
    if bytes == 0 {
        return Err(format!("must be at least 1 byte; {SIZE_EXPECTED}"));
    }
    Ok(bytes)
}

/// A memory limit: a [`size`] of at most 1 PiB.
pub fn memory(text: &str) -> Result<u64, String> {
    let bytes = size(text)?;
    if bytes > MAX_MEMORY_BYTES {
        return Err("too large: the most is 1P (1024T)".to_string());
    }
    Ok(bytes)
}

/// A rate in bytes per second: a [`size`] (`10M` is 10 MiB/s).
pub fn rate(text: &str) -> Result<u64, String> {
    size(text).map_err(|e| e.replace("a size like", "a rate in bytes per second like"))
}

/// A CPU limit as a number of cores with at most three decimals (`0.5`, `2`, `1.25`),
/// returned in thousandths of a core. More than zero, at most 1048.576 (the API's
/// bound of 1048576 thousandths).
pub fn cpu(text: &str) -> Result<u32, String> {
    const EXPECTED: &str = "expected a number of cores like 0.5, 1 or 2.25";
    let t = text.trim();
    let (whole, fraction) = match t.split_once('.') {
        Some((w, f)) => (w, f),
        None => (t, ""),
    };
    let all_digits = |s: &str| s.chars().all(|c| c.is_ascii_digit());
    if (whole.is_empty() && fraction.is_empty()) || !all_digits(whole) || !all_digits(fraction) {
        return Err(EXPECTED.to_string());
    }
    if fraction.len() > 3 {
        return Err(format!(
            "at most 3 decimals (the unit is a thousandth of a core); {EXPECTED}"
        ));
    }
    // Whole cores beyond the bound are refused without overflowing.
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| CPU_TOO_LARGE.to_string())?
    };
    let fraction: u64 = format!("{fraction:0<3}").parse().unwrap_or(0);
    let millis = whole
        .checked_mul(1000)
        .and_then(|w| w.checked_add(fraction))
        .ok_or_else(|| CPU_TOO_LARGE.to_string())?;
    if millis == 0 {
        return Err(format!("must be more than 0; {EXPECTED}"));
    }
    if millis > u64::from(MAX_CPU_MILLIS) {
        return Err(CPU_TOO_LARGE.to_string());
    }
    Ok(millis as u32)
}

/// A count of at least 1 (IO operations per second).
pub fn count(text: &str) -> Result<u64, String> {
    match text.trim().parse::<u64>() {
        Ok(0) => Err("must be at least 1".to_string()),
        Ok(n) => Ok(n),
        Err(_) => Err("expected a whole number like 100".to_string()),
    }
}

/// A timeout: a duration like 90s, 10m, 2h30m or 1d, at least 1 ms.
pub fn timeout(text: &str) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(text.trim())
        .map_err(|_| "expected a duration like 90s, 10m, 2h30m or 1d".to_string())?;
    if d < std::time::Duration::from_millis(1) {
        return Err("must be at least 1ms".to_string());
    }
    Ok(d)
}

/// A pids limit: a count from 1 to 4194304.
pub fn pids(text: &str) -> Result<u32, String> {
    let n = count(text)?;
    if n > u64::from(MAX_PIDS) {
        return Err(format!("too large: the most is {MAX_PIDS}"));
    }
    Ok(n as u32)
}

/// An environment variable `NAME=VALUE`; the name is `[A-Za-z_][A-Za-z0-9_]*`.
pub fn env_var(text: &str) -> Result<(String, String), String> {
    let Some((name, value)) = text.split_once('=') else {
        return Err("expected NAME=VALUE, like LANG=C.UTF-8".to_string());
    };
    let mut chars = name.chars();
    let valid = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid || name.len() > MAX_ENV_NAME {
        return Err(format!(
            "expected NAME=VALUE where NAME is letters, digits and '_', not starting with \
             a digit, at most {MAX_ENV_NAME} bytes"
        ));
    }
    Ok((name.to_string(), value.to_string()))
}

/// A block device for IO limits: a path under `/dev/`.
pub fn device(text: &str) -> Result<String, String> {
    if !text.starts_with("/dev/") || text.len() <= "/dev/".len() || text.len() > 128 {
        return Err("expected a block device path like /dev/vda or /dev/nvme0n1".to_string());
    }
    Ok(text.to_string())
}

/// A job name: 1 to 64 ASCII letters, digits, `_`, `.` and `-`, starting with a letter
/// or digit (the server checks the same).
pub fn job_name(text: &str) -> Result<String, String> {
    let ok = !text.is_empty()
        && text.len() <= 64
        && text.starts_with(|c: char| c.is_ascii_alphanumeric())
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(text.to_string())
    } else {
        Err(
            "expected 1 to 64 letters, digits, '_', '.' or '-', starting with a letter or digit"
                .to_string(),
        )
    }
}

/// A label `KEY=VALUE` (the server checks the key's and the value's shape).
pub fn label(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err("expected KEY=VALUE, like team=infra".to_string()),
    }
}

/// A working directory in the job: an absolute path without `.` or `..` components.
pub fn workdir(text: &str) -> Result<String, String> {
    if !text.starts_with('/') || text.len() > 4096 || text.contains('\0') {
        return Err("expected an absolute path in the job, like /srv/app".to_string());
    }
    if text.split('/').any(|c| c == "." || c == "..") {
        return Err("expected a path without . or .. components".to_string());
    }
    Ok(text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workdirs_are_absolute_and_plain() {
        assert_eq!(workdir("/srv/app"), Ok("/srv/app".to_string()));
        assert!(workdir("srv").is_err());
        assert!(workdir("/srv/../etc").is_err());
        assert!(workdir("/srv/./x").is_err());
    }

    #[test]
    fn sizes_accept_binary_units_and_plain_bytes() {
        assert_eq!(size("1048576"), Ok(1_048_576));
        assert_eq!(size("512K"), Ok(512 * 1024));
        assert_eq!(size("256M"), Ok(256 << 20));
        assert_eq!(size("2G"), Ok(2 << 30));
        assert_eq!(size("1T"), Ok(1 << 40));
        assert_eq!(size("256m"), Ok(256 << 20));
        assert_eq!(size("256Mi"), Ok(256 << 20));
        assert_eq!(size("256MiB"), Ok(256 << 20));
        assert_eq!(size("256MB"), Ok(256 << 20));
        assert_eq!(size("100B"), Ok(100));
    }

    #[test]
    fn bad_sizes_say_what_was_expected() {
        for bad in [
            "lots", "", "M", "-1", "1.5G", "10X", "10Mo", "1 0M", "0x10", "5b",
        ] {
            assert_eq!(size(bad), Err(SIZE_EXPECTED.to_string()), "{bad:?}");
        }
        assert!(
            size("0")
                .unwrap_err()
                .starts_with("must be at least 1 byte")
        );
        assert!(
            size("0M")
                .unwrap_err()
                .starts_with("must be at least 1 byte")
        );
        assert!(
            size("99999999999999999999")
                .unwrap_err()
                .starts_with("too large")
        );
        assert!(size("20000000T").unwrap_err().starts_with("too large"));
        assert!(memory("2P").is_err());
        assert!(memory("1025T").unwrap_err().starts_with("too large"));
        assert_eq!(memory("1024T"), Ok(MAX_MEMORY_BYTES));
    }

    #[test]
    fn cpu_is_in_thousandths_of_a_core() {
        assert_eq!(cpu("0.5"), Ok(500));
        assert_eq!(cpu(".5"), Ok(500));
        assert_eq!(cpu("1"), Ok(1000));
        assert_eq!(cpu("1."), Ok(1000));
        assert_eq!(cpu("2.25"), Ok(2250));
        assert_eq!(cpu("0.001"), Ok(1));
        assert_eq!(cpu("1024"), Ok(1_024_000));
        assert_eq!(cpu("1048.576"), Ok(MAX_CPU_MILLIS));
    }

    #[test]
    fn bad_cpu_values_are_refused_sensibly() {
        for bad in ["0", "0.0", "0.000"] {
            assert!(
                cpu(bad).unwrap_err().starts_with("must be more than 0"),
                "{bad}"
            );
        }
        for bad in [
            "-1", "-0.5", "NaN", "nan", "inf", "1e3", "", ".", "half", "1,5", "+1",
        ] {
            assert!(cpu(bad).unwrap_err().starts_with("expected"), "{bad:?}");
        }
        assert!(cpu("0.0005").unwrap_err().starts_with("at most 3 decimals"));
        assert!(cpu("1048.577").unwrap_err().starts_with("too large"));
        assert!(
            cpu("99999999999999999999999")
                .unwrap_err()
                .starts_with("too large")
        );
    }

    #[test]
    fn counts_and_pids() {
        assert_eq!(pids("100"), Ok(100));
        assert!(pids("0").is_err());
        assert!(pids("4194305").unwrap_err().starts_with("too large"));
        assert!(
            pids("many")
                .unwrap_err()
                .starts_with("expected a whole number")
        );
        assert_eq!(count("1"), Ok(1));
        assert_eq!(rate("10M"), Ok(10 << 20));
        assert!(
            rate("fast")
                .unwrap_err()
                .contains("a rate in bytes per second")
        );
    }

    #[test]
    fn env_vars() {
        assert_eq!(env_var("A=b=c"), Ok(("A".into(), "b=c".into())));
        assert_eq!(env_var("_X1="), Ok(("_X1".into(), String::new())));
        for bad in ["A", "=b", "1A=b", "A-B=c", "É=1"] {
            assert!(env_var(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn devices() {
        assert_eq!(device("/dev/vda"), Ok("/dev/vda".into()));
        assert!(device("vda").is_err());
        assert!(device("/dev/").is_err());
    }

    /// Many generated inputs: no parser panics, and what they accept is in bounds.
    #[test]
    fn arbitrary_input_never_panics_and_results_are_in_bounds() {
        const ALPHABET: &[char] = &[
            '0', '1', '5', '9', '.', 'K', 'M', 'G', 'T', 'P', 'i', 'B', 'b', 'k', ' ', '-', '+',
            'e', '=', '_', 'x', '/', 'd', 'v', '\0', 'é', '\n',
        ];
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..50_000 {
            let len = (next() % 24) as usize;
            let text: String = (0..len)
                .map(|_| ALPHABET[(next() % ALPHABET.len() as u64) as usize])
                .collect();
            if let Ok(bytes) = memory(&text) {
                assert!((1..=MAX_MEMORY_BYTES).contains(&bytes), "{text:?}");
            }
            if let Ok(millis) = cpu(&text) {
                assert!((1..=MAX_CPU_MILLIS).contains(&millis), "{text:?}");
            }
            if let Ok(n) = pids(&text) {
                assert!((1..=MAX_PIDS).contains(&n), "{text:?}");
            }
            let _ = rate(&text);
            let _ = env_var(&text);
            let _ = device(&text);
            let _ = text.parse::<crate::settings::Server>();
        }
    }
}
