//! Finding processes: the orphan checks of the fault tests.

use nix::sys::signal;
use nix::unistd::Pid;

/// Process ids whose command line contains `marker` (e.g. a model name unique to a test).
pub fn processes_with(marker: &str) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let me = std::process::id() as i32;
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|bytes| {
                    // Zombies have an empty command line and are already gone for our purposes.
                    String::from_utf8_lossy(&bytes)
                        .replace('\0', " ")
                        .contains(marker)
                })
                .unwrap_or(false)
        })
        .collect()
}

/// True while any process of group `pgid` exists.
pub fn group_alive(pgid: i32) -> bool {
    signal::killpg(Pid::from_raw(pgid), None).is_ok()
}

/// Every live descendant of `root`: children, their children, and so on.
pub fn descendants_of(root: u32) -> Vec<i32> {
    let mut found = Vec::new();
    let mut queue = vec![root];
    while let Some(parent) = queue.pop() {
        for child in children_of(parent) {
            if !found.contains(&child) {
                found.push(child);
                queue.push(child as u32);
            }
        }
    }
    found
}

/// True once process `pid` no longer runs: it is gone, or a zombie (it holds nothing; its
/// reaper may take its time, as a container's PID 1 does).
pub fn process_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rfind(')')
            .and_then(|end| stat[end + 1..].split_whitespace().next())
            .is_none_or(|state| matches!(state, "Z" | "X")),
    }
}

/// Process ids whose parent is `parent` (field 4 of `/proc/<pid>/stat`).
pub fn children_of(parent: u32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    // The command name (field 2) may hold spaces; fields after it do not.
                    let rest = &stat[stat.rfind(')')? + 1..];
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(parent)
        })
        .collect()
}
