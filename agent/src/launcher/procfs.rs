//! Process facts from Linux `/proc`: a process's start time (which, with its pid, identifies it
//! across pid reuse) and the members of a process group.

use std::io;

/// The fields of `/proc/<pid>/stat` the launcher uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stat {
    /// Field 3: `R`, `S`, `D`, `Z` (zombie), `X` (dead), …
    pub state: char,
    /// Field 5: the process group id.
    pub pgrp: i32,
    /// Field 22: start time after boot, in clock ticks.
    pub start_time_ticks: u64,
}

impl Stat {
    /// Whether the process has exited (a zombie waiting to be reaped runs nothing and holds
    /// no memory).
    pub fn is_dead(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Reads `/proc/<pid>/stat`. `NotFound` when no such process exists.
pub(crate) fn stat(pid: i32) -> io::Result<Stat> {
    if pid <= 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("pid {pid} is not a process"),
        ));
    }
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_stat(&text).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected /proc/{pid}/stat: {text:?}"),
        )
    })
}

/// Parses a `stat` line. The command name (field 2) is in parentheses and may itself contain
/// spaces and parentheses, so fields are counted from the last `)`.
fn parse_stat(text: &str) -> Option<Stat> {
    let after = &text[text.rfind(')')? + 1..];
    // `after` starts at field 3.
    let fields: Vec<&str> = after.split_ascii_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let pgrp = fields.get(5 - 3)?.parse().ok()?;
    let start_time_ticks = fields.get(22 - 3)?.parse().ok()?;
    Some(Stat {
        state,
        pgrp,
        start_time_ticks,
    })
}

/// Reads field 22 of `/proc/<pid>/stat`: the process's start time after boot, in clock ticks.
/// With the pid it identifies a process: a reused pid has a later start time.
pub fn process_start_time(pid: i32) -> io::Result<u64> {
    stat(pid).map(|s| s.start_time_ticks)
}

/// How many live (not zombie) processes are in process group `pgid`, by a scan of `/proc`.
pub(crate) fn live_members(pgid: i32) -> io::Result<usize> {
    let mut live = 0;
    for entry in std::fs::read_dir("/proc")? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<i32>().ok())
        else {
            continue;
        };
        // A process that ended during the scan is simply not counted.
        if let Ok(stat) = stat(pid)
            && stat.pgrp == pgid
            && !stat.is_dead()
        {
            live += 1;
        }
    }
    Ok(live)
}

/// The live processes whose environment holds `name=value`, by a scan of `/proc` (a
/// process of another user, whose environment cannot be read, is not one of them).
pub(crate) fn processes_with_env(name: &str, value: &str) -> io::Result<Vec<i32>> {
    let wanted = format!("{name}={value}").into_bytes();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        if environ
            .split(|b| *b == 0)
            .any(|var| var == wanted.as_slice())
            && stat(pid).is_ok_and(|s| !s.is_dead())
        {
            found.push(pid);
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_with_spaces_and_parentheses() {
        let line = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 \
                    987654 1000 10 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                state: 'S',
                pgrp: 4242,
                start_time_ticks: 987654,
            })
        );
        assert_eq!(parse_stat("4242 (x) S 1"), None);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn reads_this_process() {
        let me = std::process::id() as i32;
        let stat = stat(me).unwrap();
        assert_eq!(stat.pgrp, nix::unistd::getpgrp().as_raw());
        assert!(!stat.is_dead());
        assert_eq!(process_start_time(me).unwrap(), stat.start_time_ticks);
        assert!(live_members(stat.pgrp).unwrap() >= 1);
        assert_eq!(
            process_start_time(0).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
    }
}
