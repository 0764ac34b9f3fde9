//! Where the local cluster lives: `--dir`, then `KV_DIR`, then `./.kv-local` if it exists,
//! then a per-user default (`$XDG_DATA_HOME/kv/local`, else `~/.local/share/kv/local`).
//! Every message that names the folder also says which of these chose it.

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};

/// The folder name looked for in the current directory.
pub const CWD_DIR: &str = ".kv-local";

/// Which rule chose the cluster folder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DirSource {
    /// The `--dir` flag.
    Flag,
    /// The `KV_DIR` environment variable.
    Env,
    /// `./.kv-local`, which exists in the current directory.
    CurrentDir,
    /// The per-user default folder.
    UserDefault,
}

impl DirSource {
    /// A short name for JSON output.
    pub fn name(self) -> &'static str {
        match self {
            DirSource::Flag => "flag",
            DirSource::Env => "env",
            DirSource::CurrentDir => "current_dir",
            DirSource::UserDefault => "user_default",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            DirSource::Flag => "from --dir",
            DirSource::Env => "from KV_DIR",
            DirSource::CurrentDir => "./.kv-local of the current directory",
            DirSource::UserDefault => "the per-user default; --dir or KV_DIR pick another",
        }
    }
}

/// The local cluster's folder and why it was chosen. Displays as "PATH (WHY)".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterDir {
    /// The folder.
    pub path: PathBuf,
    /// The rule that chose it.
    pub source: DirSource,
}

impl fmt::Display for ClusterDir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.path.display(), self.source.describe())
    }
}

impl ClusterDir {
    /// Resolves the folder from `--dir` and the process environment.
    pub fn resolve(flag: Option<&Path>) -> ClusterDir {
        resolve_with(
            flag,
            std::env::var_os("KV_DIR"),
            Path::new(CWD_DIR).is_dir(),
            std::env::var_os("XDG_DATA_HOME"),
            std::env::var_os("HOME"),
        )
    }
}

/// The lookup itself, on explicit inputs (empty variables count as unset, and a relative
/// `XDG_DATA_HOME` is ignored, as the XDG spec says).
fn resolve_with(
    flag: Option<&Path>,
    kv_dir: Option<OsString>,
    cwd_has_dir: bool,
    xdg_data_home: Option<OsString>,
    home: Option<OsString>,
) -> ClusterDir {
    let set = |v: Option<OsString>| v.filter(|v| !v.is_empty()).map(PathBuf::from);
    let (path, source) = if let Some(p) = flag {
        (p.to_path_buf(), DirSource::Flag)
    } else if let Some(p) = set(kv_dir) {
        (p, DirSource::Env)
    } else if cwd_has_dir {
        (PathBuf::from(CWD_DIR), DirSource::CurrentDir)
    } else if let Some(xdg) = set(xdg_data_home).filter(|p| p.is_absolute()) {
        (xdg.join("kv/local"), DirSource::UserDefault)
    } else if let Some(home) = set(home) {
        (home.join(".local/share/kv/local"), DirSource::UserDefault)
    } else {
        // No home at all (a bare container): the current directory is all there is.
        (PathBuf::from(CWD_DIR), DirSource::CurrentDir)
    };
    ClusterDir { path, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(s: &str) -> Option<OsString> {
        Some(OsString::from(s))
    }

    #[test]
    fn each_rule_wins_over_the_ones_after_it() {
        let flag = Path::new("/f");
        let cases = [
            (
                Some(flag),
                os("/e"),
                true,
                os("/x"),
                os("/h"),
                "/f",
                DirSource::Flag,
            ),
            (
                None,
                os("/e"),
                true,
                os("/x"),
                os("/h"),
                "/e",
                DirSource::Env,
            ),
            (
                None,
                None,
                true,
                os("/x"),
                os("/h"),
                ".kv-local",
                DirSource::CurrentDir,
            ),
            (
                None,
                None,
                false,
                os("/x"),
                os("/h"),
                "/x/kv/local",
                DirSource::UserDefault,
            ),
            (
                None,
                None,
                false,
                None,
                os("/h"),
                "/h/.local/share/kv/local",
                DirSource::UserDefault,
            ),
            // Empty variables are unset; a relative XDG_DATA_HOME is ignored.
            (
                None,
                os(""),
                false,
                os("rel"),
                os("/h"),
                "/h/.local/share/kv/local",
                DirSource::UserDefault,
            ),
            (
                None,
                None,
                false,
                None,
                None,
                ".kv-local",
                DirSource::CurrentDir,
            ),
        ];
        for (flag, env, cwd, xdg, home, path, source) in cases {
            let got = resolve_with(flag, env.clone(), cwd, xdg.clone(), home.clone());
            assert_eq!(
                got,
                ClusterDir {
                    path: PathBuf::from(path),
                    source
                },
                "flag {flag:?} KV_DIR {env:?} cwd {cwd} XDG {xdg:?} HOME {home:?}"
            );
        }
    }

    #[test]
    fn messages_say_which_rule_chose_the_folder() {
        let d = resolve_with(None, os("/e"), false, None, None);
        assert_eq!(d.to_string(), "/e (from KV_DIR)");
    }
}
