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
