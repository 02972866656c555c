//! SNMP counters: kcptun's CSV log and SIGUSR1 dump (docs/protocol.md §8.7).

use std::process::{Command, Stdio};
use std::time::Duration;

use kcpgate::snmp::{format_path, write_row};
use kcpgate_core::Snmp;

const COLUMNS: &str = "Unix,BytesSent,BytesReceived,MaxConn,ActiveOpens,PassiveOpens,CurrEstab,InErrs,InCsumErrors,KCPInErrors,InPkts,OutPkts,InSegs,OutSegs,InBytes,OutBytes,RetransSegs,FastRetransSegs,EarlyRetransSegs,LostSegs,RepeatSegs,FECFullShards,FECParityShards,FECErrs,FECRecovered,FECShardSet,FECShardMin,RingBufferSndQueue,RingBufferRcvQueue,RingBufferSndBuffer,OOBPackets";

fn temp_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("kcpgate-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn conformance_56_csv_header_is_unix_then_the_30_columns() {
    let dir = temp_dir("csv");
    let file = dir.join("snmp.log");
    let s = Snmp { bytes_sent: 5, fec_recovered: 7, fec_parity_shards: 9, ..Snmp::default() };
    write_row(&file, 100, &s).unwrap();
    write_row(&file, 160, &Snmp { bytes_sent: 8, ..s }).unwrap();
    let text = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], COLUMNS, "header: Unix and kcp-go's Header() columns, FEC columns in CSV order");
    assert_eq!(lines.len(), 3, "the header is written only into an empty file");
    let row: Vec<&str> = lines[1].split(',').collect();
    assert_eq!(row.len(), 31);
    assert_eq!((row[0], row[1]), ("100", "5"));
    assert_eq!((row[22], row[24]), ("9", "7"), "FECParityShards and FECRecovered in their columns");
    assert!(lines[2].starts_with("160,8,"), "values are cumulative snapshots");
}

#[test]
fn conformance_84_file_name_takes_the_go_time_layout() {
    // 2025-01-05 13:04:09 UTC
    let t = 1_736_082_249;
    assert_eq!(format_path("./snmp-20060102.log", t), "./snmp-20250105.log");
    assert_eq!(format_path("/var/log/kcp/20060102-150405.csv", t), "/var/log/kcp/20250105-130409.csv");
    assert_eq!(format_path("/data2006/plain.log", t), "/data2006/plain.log", "only the file name is formatted");
    assert_eq!(format_path("s-06-1-2.log", t), "s-25-1-5.log");
}

#[test]
fn conformance_83_sigusr1_dumps_the_counters_and_the_csv_log_runs() {
    let dir = temp_dir("usr1");
    let log = dir.join("kcpgate.log");
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_kcpgate"))
        .args(["server", "-l", &format!("127.0.0.1:{udp}"), "-log", log.to_str().unwrap()])
        .args(["-snmplog", dir.join("snmp-20060102.log").to_str().unwrap(), "-snmpperiod", "1"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // A datagram with a bad checksum, so a counter moves.
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    s.send_to(&[0u8; 64], ("127.0.0.1", udp)).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(Command::new("kill").args(["-USR1", &child.id().to_string()]).status().unwrap().success());
    std::thread::sleep(Duration::from_millis(2200));
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).unwrap();
    let line = text.lines().find(|l| l.contains("KCP SNMP:&{")).expect("a KCP SNMP line in the log");
    let fields = &line[line.find("&{").unwrap() + 2..line.rfind('}').unwrap()];
    let names: Vec<&str> = fields.split(' ').map(|f| f.split(':').next().unwrap()).collect();
    assert_eq!(names.len(), 30, "{line}");
    assert_eq!((names[0], names[29]), ("BytesSent", "OOBPackets"));
    assert!(fields.contains("InCsumErrors:1"), "{line}");
    let csv = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("snmp-"))
        .expect("CSV file");
    let rows = std::fs::read_to_string(csv.path()).unwrap();
    assert!(rows.starts_with("Unix,BytesSent,"), "{rows}");
    assert!(rows.lines().count() >= 2, "header and at least one row: {rows}");
}
