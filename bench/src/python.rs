//! `--with-python`: the same routes as a tiny Django app, served by gunicorn (WSGI, threads),
//! uvicorn (ASGI) and granian (WSGI), installed into a venv under bench/target.

use std::path::Path;

use crate::runner::Target;

pub fn targets(_scratch: &Path) -> Result<Vec<Target>, String> {
    Err("not implemented yet".to_owned())
}
