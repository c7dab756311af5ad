//! `powerfs MOUNTPOINT BACKING_DIR`: mounts a powerfs for manual runs and
//! takes commands on standard input, one a line: `cut`, `tear SEED` (a cut
//! that tears the last unsynced write), `stats`, `quit` (or end of input).

use std::io::BufRead;
use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let mut args = std::env::args_os().skip(1);
    let (Some(mountpoint), Some(backing)) = (args.next(), args.next()) else {
        eprintln!("usage: powerfs MOUNTPOINT BACKING_DIR   (then: cut | tear SEED | stats | quit on stdin)");
        std::process::exit(2);
    };
    let mountpoint = PathBuf::from(mountpoint);
    let fs = powerfs::PowerFs::mount(&mountpoint, &PathBuf::from(backing), "manual")?;
    println!("powerfs mounted on {}", mountpoint.display());
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["cut"] => println!("{:?}", fs.cut(None)),
            ["tear", seed] => match seed.parse() {
                Ok(seed) => println!("{:?}", fs.cut(Some(seed))),
                Err(_) => println!("tear needs a number"),
            },
            ["stats"] => println!("{:?}; {} bytes unsynced", fs.stats(), fs.dirty_bytes()),
            ["quit"] => break,
            [] => {}
            _ => println!("commands: cut | tear SEED | stats | quit"),
        }
    }
    fs.unmount()
}
