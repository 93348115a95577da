//! rgfs-populate IMAGE [standard | files N [PER_DIR]]: adds test content to
//! an image made by mkfs (test and benchmark helper, not an admin tool).

use rgfs_block::{Access, FileDevice};
use rgfs_fsck::populate::{pattern, standard_content, FileSpec, Populator};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 2 {
        eprintln!("usage: rgfs-populate IMAGE [standard | files N [PER_DIR]]");
        std::process::exit(16);
    }
    let dev = FileDevice::open(&args[1], Access::ReadWrite).unwrap_or_else(|e| {
        eprintln!("rgfs-populate: {e}");
        std::process::exit(8)
    });
    let mut p = Populator::open(&dev).unwrap_or_else(|e| {
        eprintln!("rgfs-populate: {e}");
        std::process::exit(8)
    });
    let what = args.get(2).map(String::as_str).unwrap_or("standard");
    let result = match what {
        "standard" => standard_content(&mut p),
        "files" => {
            let n: u64 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(1000);
            let per_dir: u64 = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(1000);
            (|| {
                let root = p.root();
                let mut dir = root;
                for i in 0..n {
                    if i % per_dir == 0 {
                        dir = p.mkdir(root, &format!("d{:05}", i / per_dir))?;
                    }
                    let len = (i as usize * 131) % 8000;
                    p.create_file(
                        dir,
                        &format!("f{i:07}"),
                        &FileSpec {
                            data: &pattern(i, len),
                            sparse: false,
                            mode: 0o644,
                        },
                    )?;
                }
                Ok(())
            })()
        }
        other => {
            eprintln!("rgfs-populate: unknown content {other:?}");
            std::process::exit(16)
        }
    };
    if let Err(e) = result.and_then(|_| p.finish()) {
        eprintln!("rgfs-populate: {e}");
        std::process::exit(8);
    }
}
