//! Process facts from Linux `/proc`: a process's start time (which, with its pid, identifies it
//! across pid reuse), the members of a process group, and a process's descendants.
//!
//! Hand-written rather than through the `procfs` crate: the launcher needs four fields of
//! `stat` and the `environ` file, and the one subtle part (a command name with spaces and
//! parentheses) is a few lines tested below.

use std::io;

/// The fields of `/proc/<pid>/stat` the launcher uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stat {
    /// Field 3: `R`, `S`, `D`, `Z` (zombie), `X` (dead), …
    pub state: char,
    /// Field 4: the parent's pid.
    pub ppid: i32,
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
    let ppid = fields.get(4 - 3)?.parse().ok()?;
    let pgrp = fields.get(5 - 3)?.parse().ok()?;
    let start_time_ticks = fields.get(22 - 3)?.parse().ok()?;
    Some(Stat {
        state,
        ppid,
        pgrp,
        start_time_ticks,
    })
}

/// Reads field 22 of `/proc/<pid>/stat`: the process's start time after boot, in clock ticks.
/// With the pid it identifies a process: a reused pid has a later start time.
pub fn process_start_time(pid: i32) -> io::Result<u64> {
    stat(pid).map(|s| s.start_time_ticks)
}

/// Every process's pid and `stat`, by a scan of `/proc`. A process that ends during the scan
/// is simply not listed.
fn all_processes() -> io::Result<impl Iterator<Item = (i32, Stat)>> {
    Ok(std::fs::read_dir("/proc")?.filter_map(|entry| {
        let pid = entry.ok()?.file_name().to_str()?.parse::<i32>().ok()?;
        Some((pid, stat(pid).ok()?))
    }))
}

/// How many live (not zombie) processes are in process group `pgid`, by a scan of `/proc`.
pub(crate) fn live_members(pgid: i32) -> io::Result<usize> {
    Ok(all_processes()?
        .filter(|(_, stat)| stat.pgrp == pgid && !stat.is_dead())
        .count())
}

/// The live (not zombie) descendants of `root` with their process group ids: its children,
/// their children, and so on, by the parent links of one scan of `/proc`. `root` itself is
/// not included. Processes forked during the scan may be missed; callers that must end a
/// whole tree scan again until nothing is left.
pub(crate) fn live_descendants(root: i32) -> io::Result<Vec<(i32, i32)>> {
    let live: std::collections::HashMap<i32, Stat> = all_processes()?
        .filter(|(_, stat)| !stat.is_dead())
        .collect();
    let links: Vec<(i32, i32)> = live.iter().map(|(pid, stat)| (*pid, stat.ppid)).collect();
    Ok(descendants(&links, root)
        .into_iter()
        .filter_map(|pid| Some((pid, live.get(&pid)?.pgrp)))
        .collect())
}

/// The descendants of `root` in a table of (pid, parent pid) links, breadth first. Each pid
/// is listed once even if a racy scan made the links loop.
fn descendants(links: &[(i32, i32)], root: i32) -> Vec<i32> {
    let mut children: std::collections::HashMap<i32, Vec<i32>> = std::collections::HashMap::new();
    for &(pid, ppid) in links {
        children.entry(ppid).or_default().push(pid);
    }
    let mut seen = std::collections::HashSet::from([root]);
    let mut found = Vec::new();
    let mut queue = std::collections::VecDeque::from([root]);
    while let Some(parent) = queue.pop_front() {
        for &child in children.get(&parent).map_or(&[][..], Vec::as_slice) {
            if seen.insert(child) {
                found.push(child);
                queue.push_back(child);
            }
        }
    }
    found
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
                ppid: 1,
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

    #[test]
    fn descendants_follow_parent_links_and_survive_loops() {
        // 10 ─┬─ 11 ── 13 ── 14
        //     └─ 12
        // 20 ── 21 (another tree), and 30 ⇄ 31 (a loop a racy scan could produce).
        let links = [
            (11, 10),
            (12, 10),
            (13, 11),
            (14, 13),
            (21, 20),
            (30, 31),
            (31, 30),
            (10, 1),
        ];
        assert_eq!(descendants(&links, 10), vec![11, 12, 13, 14]);
        assert_eq!(descendants(&links, 13), vec![14]);
        assert_eq!(descendants(&links, 12), Vec::<i32>::new());
        assert_eq!(descendants(&links, 30), vec![31]);
        assert_eq!(descendants(&links, 99), Vec::<i32>::new());
    }

    #[test]
    fn finds_the_descendants_of_a_real_process_tree() {
        // sh ─┬─ sleep
        //     └─ sh ── sleep
        let mut tree = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & sh -c 'sleep 30 & wait' & wait"])
            .spawn()
            .unwrap();
        let root = tree.id() as i32;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut found = Vec::new();
        while std::time::Instant::now() < deadline {
            found = live_descendants(root).unwrap();
            if found.len() == 3 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        for &(pid, _) in &found {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = tree.kill();
        let _ = tree.wait();
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(found.iter().all(|(pid, _)| *pid != root));
        // Both sleeps and the inner shell run in the test's group, as the outer shell does.
        let group = nix::unistd::getpgrp().as_raw();
        assert!(found.iter().all(|(_, pgrp)| *pgrp == group), "{found:?}");
    }
}
