//! The fork server's side of "a job leaves no process behind": it is a child
//! subreaper (`PR_SET_CHILD_SUBREAPER`), so whatever a worker's commands
//! orphan is reparented to it rather than to init, and it kills every child
//! of its own that is not a worker.
//!
//! Killing a child of our own by pid is safe: until we reap it, its pid (and
//! the id of a group it leads) cannot be reused. So is killing the group
//! whose id is an unreaped child's pid: only that child can have made it.

use std::collections::HashSet;
use std::io;

use crate::sys;

/// Makes this process the reaper of its descendants' orphans.
pub(crate) fn become_subreaper() -> io::Result<()> {
    // SAFETY: prctl with integer arguments; touches no memory of ours.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// SIGKILLs every child of this process that is not in `workers`, and the
/// process group each one leads: the orphans of commands (or the leaders of
/// their groups, after the worker died) that reparented to us. Returns how
/// many it found.
pub(crate) fn kill_orphans(workers: &HashSet<i32>) -> usize {
    let me = std::process::id() as i32;
    let mut n = 0;
    for pid in children_of(me) {
        if !workers.contains(&pid) {
            let _ = sys::killpg(pid, libc::SIGKILL);
            let _ = sys::kill(pid, libc::SIGKILL);
            n += 1;
        }
    }
    n
}

/// The pids whose parent is `parent`, zombies included, from `/proc` (the
/// `children` file needs `CONFIG_PROC_CHILDREN`; a scan needs nothing).
fn children_of(parent: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| parent_of(pid) == Some(parent))
        .collect()
}

/// The parent pid in `/proc/<pid>/stat`, read after the command name (which
/// may hold spaces and parentheses).
fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_its_own_children() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let kids = children_of(std::process::id() as i32);
        let _ = child.kill();
        let _ = child.wait();
        assert!(kids.contains(&(child.id() as i32)), "{kids:?}");
    }
}
