//! Host telemetry read from `/proc` (Linux): CPU use between two readings, memory, load.
//! Elsewhere every value reads as zero.

/// One reading of the host.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct HostReading {
    /// CPU busy since the previous reading, percent of all cores.
    pub cpu_percent: f64,
    /// Memory in use (total − available), MiB.
    pub memory_used_mb: u64,
    /// Installed memory, MiB.
    pub memory_total_mb: u64,
    /// One-minute load average.
    pub load1: f64,
}

/// Keeps the previous CPU counters so each reading covers the time since the last one.
#[derive(Debug, Default)]
pub struct HostProbe {
    prev: Option<(u64, u64)>,
}

impl HostProbe {
    /// Reads the host now.
    pub fn read(&mut self) -> HostReading {
        let cpu = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| parse_cpu(&s));
        let cpu_percent = match (cpu, self.prev) {
            (Some((busy, total)), Some((pb, pt))) if total > pt => {
                (busy.saturating_sub(pb)) as f64 * 100.0 / (total - pt) as f64
            }
            _ => 0.0,
        };
        if cpu.is_some() {
            self.prev = cpu;
        }
        let (memory_used_mb, memory_total_mb) = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|s| parse_meminfo(&s))
            .unwrap_or((0, 0));
        let load1 = std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0);
        HostReading {
            cpu_percent: cpu_percent.clamp(0.0, 100.0),
            memory_used_mb,
            memory_total_mb,
            load1,
        }
    }
}

/// (busy, total) jiffies from the aggregate `cpu` line.
fn parse_cpu(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    if v.len() < 4 {
        return None;
    }
    let total: u64 = v.iter().take(8).sum();
    // idle + iowait are not busy.
    let idle = v[3] + v.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

/// (used, total) MiB from `MemTotal` and `MemAvailable`.
fn parse_meminfo(s: &str) -> Option<(u64, u64)> {
    let field = |name: &str| -> Option<u64> {
        s.lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    let total = field("MemTotal:")?;
    let avail = field("MemAvailable:").or_else(|| field("MemFree:"))?;
    Some((total.saturating_sub(avail) / 1024, total / 1024))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_parse() {
        let stat = "cpu  100 0 100 700 100 0 0 0 0 0\ncpu0 1 2 3 4\n";
        assert_eq!(parse_cpu(stat), Some((200, 1000)));
        let mem = "MemTotal:       16384000 kB\nMemFree:  100 kB\nMemAvailable:    8192000 kB\n";
        assert_eq!(parse_meminfo(mem), Some((8000, 16000)));
    }

    #[test]
    fn a_second_reading_reports_cpu_between_the_two() {
        let mut p = HostProbe::default();
        let _ = p.read();
        let r = p.read();
        assert!((0.0..=100.0).contains(&r.cpu_percent));
        if cfg!(target_os = "linux") {
            assert!(r.memory_total_mb > 0);
        }
    }
}
