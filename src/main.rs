mod cli;
mod config;

fn main() {
    let inv = match cli::parse(std::env::args_os()) {
        Ok(inv) => inv,
        Err(e) => {
            eprintln!("maitred: {e}");
            std::process::exit(2);
        }
    };
    match config::load(&inv) {
        Ok(l) => println!("{:?}", l.settings),
        Err(e) => {
            eprintln!("maitred: configuration error:\n{e}");
            std::process::exit(2);
        }
    }
}
