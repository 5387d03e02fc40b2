//! The glibc versions an ELF library needs: the `GLIBC_x.y` names in its version needs
//! (`.gnu.version_r`, what `objdump -T` prints beside each symbol). A library needing a version
//! the system's glibc lacks cannot be loaded there, and preloaded it stops every program, so
//! `vramguard cdi` refuses to hand containers a library newer than the oldest glibc of their
//! images (2.28 unless told otherwise: the wheel's manylinux_2_28).

use std::path::Path;

use object::elf::FileHeader64;
use object::read::elf::FileHeader;

/// A glibc version, `(major, minor)`.
pub type Version = (u32, u32);

/// The oldest glibc the shipped library is built for (the wheel's tag, scripts/install.sh).
pub const OLDEST_SUPPORTED: Version = (2, 28);

/// Parses `2.28`.
pub fn parse_version(text: &str) -> Result<Version, String> {
    let (major, minor) = text
        .split_once('.')
        .ok_or_else(|| format!("{text:?} is not a glibc version like 2.28"))?;
    match (major.parse(), minor.parse()) {
        (Ok(major), Ok(minor)) => Ok((major, minor)),
        _ => Err(format!("{text:?} is not a glibc version like 2.28")),
    }
}

/// The highest `GLIBC_x.y` version the 64-bit ELF file at `path` needs (`None`: none at all).
pub fn highest_needed(path: &Path) -> Result<Option<Version>, String> {
    let data = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let not_elf = |e: object::Error| format!("{} is not a 64-bit ELF library: {e}", path.display());
    let header = FileHeader64::<object::Endianness>::parse(&*data).map_err(not_elf)?;
    let endian = header.endian().map_err(not_elf)?;
    let sections = header.sections(endian, &*data).map_err(not_elf)?;
    let Some((mut needs, link)) = sections.gnu_verneed(endian, &*data).map_err(not_elf)? else {
        return Ok(None);
    };
    let strings = sections.strings(endian, &*data, link).map_err(not_elf)?;
    let mut highest = None;
    while let Some((_, mut auxes)) = needs.next().map_err(not_elf)? {
        while let Some(aux) = auxes.next().map_err(not_elf)? {
            let name = aux.name(endian, strings).map_err(not_elf)?;
            let version = std::str::from_utf8(name)
                .ok()
                .and_then(|n| n.strip_prefix("GLIBC_"))
                .and_then(|v| parse_version(v).ok());
            highest = highest.max(version);
        }
    }
    Ok(highest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_and_order() {
        assert_eq!(parse_version("2.28"), Ok((2, 28)));
        assert!(parse_version("2.34").unwrap() > parse_version("2.4").unwrap());
        assert!(parse_version("2").is_err() && parse_version("x.1").is_err());
    }

    #[test]
    fn this_executable_needs_some_glibc() {
        let exe = std::env::current_exe().unwrap();
        let highest = highest_needed(&exe).unwrap();
        assert!(highest.is_some_and(|v| v >= (2, 2)), "{highest:?}");
    }
}
