//! The engine (`data`, `model`, `latent`) never imports the GUI crates.

use std::path::Path;

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().and_then(|e| e.to_str()) == Some("rs") {
            out.push(path);
        }
    }
}

#[test]
fn engine_modules_do_not_import_egui_or_eframe() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    for module in ["data", "model", "latent"] {
        rust_files(&src.join(module), &mut files);
    }
    assert!(!files.is_empty());
    let banned = [
        "egui",
        "eframe",
        "wgpu",
        "crate::app",
        "crate::ui",
        "crate::worker",
        "crate::render",
    ];
    let mut offences = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for (line_no, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            if banned.iter().any(|b| code.contains(b)) {
                offences.push(format!(
                    "{}:{}: {}",
                    file.display(),
                    line_no + 1,
                    line.trim()
                ));
            }
        }
    }
    assert!(
        offences.is_empty(),
        "the engine must not depend on the GUI:\n{}",
        offences.join("\n")
    );
}
