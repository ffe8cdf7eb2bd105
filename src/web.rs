//! The meeting page: a browser client of the signaling protocol, served by the node.
//!
//! The page is plain HTML, CSS and JavaScript modules compiled into the binary, so
//! one executable is the whole server. `/` serves the page and `/app/<file>` its
//! assets; nothing is read from disk at run time. The assets carry no version in
//! their names, so every response asks the browser to revalidate (`no-cache`)
//! with an ETag fixed at build time.

use actix_web::http::header::{self, ContentType};
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

/// One embedded file.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const JS: &str = "text/javascript; charset=utf-8";

static INDEX: &str = include_str!("../web/index.html");

/// An asset from `web/app/`, named by its file name.
macro_rules! asset {
    ($name:literal, $content_type:expr) => {
        Asset {
            name: $name,
            content_type: $content_type,
            body: include_str!(concat!("../web/app/", $name)),
        }
    };
}

static ASSETS: &[Asset] = &[
    asset!("style.css", "text/css; charset=utf-8"),
    asset!("main.js", JS),
    asset!("meeting.js", JS),
    asset!("connection.js", JS),
    asset!("media.js", JS),
    asset!("sdp.js", JS),
    asset!("stats.js", JS),
    asset!("view.js", JS),
    asset!("icons.js", JS),
];

/// What the page may load: its own assets, its own socket, local media and blobs.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; connect-src 'self'; \
     img-src 'self' data:; media-src 'self' blob: mediastream:; object-src 'none'; \
     base-uri 'none'; frame-ancestors 'none'";

/// Adds the page routes to an app; the node's other routes are unaffected.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/", web::get().to(index))
        .route("/app/{file}", web::get().to(asset));
}

async fn index(req: HttpRequest) -> HttpResponse {
    respond(&req, "text/html; charset=utf-8", INDEX)
}

async fn asset(req: HttpRequest, file: web::Path<String>) -> HttpResponse {
    match ASSETS.iter().find(|a| a.name == file.as_str()) {
        Some(asset) => respond(&req, asset.content_type, asset.body),
        None => {
            HttpResponse::NotFound().json(json!({"error": "not_found", "message": "no such asset"}))
        }
    }
}

fn respond(req: &HttpRequest, content_type: &str, body: &'static str) -> HttpResponse {
    let etag = etag_of(body);
    let fresh = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|tag| tag.trim() == etag));
    let mut response = if fresh {
        HttpResponse::NotModified()
    } else {
        HttpResponse::Ok()
    };
    response
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header((header::ETAG, etag.clone()))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY))
        .insert_header((header::REFERRER_POLICY, "no-referrer"));
    if fresh {
        return response.finish();
    }
    response
        .insert_header(ContentType(
            content_type.parse().expect("asset MIME types parse"),
        ))
        .body(body)
}

/// A strong ETag from the content: FNV-1a, enough to tell two builds' files apart.
fn etag_of(body: &str) -> String {
    let hash = body.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("\"{hash:016x}\"")
}

#[cfg(test)]
mod tests {
    use actix_web::test::{call_service, init_service, read_body, TestRequest};
    use actix_web::App;

    use super::*;

    async fn get(path: &str, etag: Option<&str>) -> (u16, String, Option<String>, String) {
        let app = init_service(App::new().configure(configure)).await;
        let mut req = TestRequest::get().uri(path);
        if let Some(etag) = etag {
            req = req.insert_header((header::IF_NONE_MATCH, etag));
        }
        let res = call_service(&app, req.to_request()).await;
        let status = res.status().as_u16();
        let header_of = |name| {
            res.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let content_type = header_of(header::CONTENT_TYPE).unwrap_or_default();
        let tag = header_of(header::ETAG);
        let body = read_body(res).await;
        (
            status,
            content_type,
            tag,
            String::from_utf8_lossy(&body).into(),
        )
    }

    #[actix_web::test]
    async fn index_is_the_meeting_page() {
        let (status, content_type, _, body) = get("/", None).await;
        assert_eq!(status, 200);
        assert!(content_type.starts_with("text/html"), "{content_type}");
        assert!(body.contains("/app/main.js"), "{body}");
    }

    #[actix_web::test]
    async fn assets_carry_their_content_types() {
        for asset in ASSETS {
            let (status, content_type, _, body) = get(&format!("/app/{}", asset.name), None).await;
            assert_eq!(status, 200, "{}", asset.name);
            assert_eq!(content_type, asset.content_type, "{}", asset.name);
            assert_eq!(body, asset.body);
        }
    }

    #[actix_web::test]
    async fn unknown_assets_are_not_found() {
        for path in ["/app/nope.js", "/app/..%2Fsrc%2Fweb.rs", "/app/"] {
            let (status, _, _, _) = get(path, None).await;
            assert_eq!(status, 404, "{path}");
        }
    }

    #[actix_web::test]
    async fn a_matching_etag_is_not_modified() {
        let (_, _, etag, _) = get("/app/style.css", None).await;
        let etag = etag.expect("an etag");
        let (status, _, _, body) = get("/app/style.css", Some(&etag)).await;
        assert_eq!(status, 304);
        assert!(body.is_empty());
    }

    #[test]
    fn every_module_the_page_imports_is_served() {
        let sources = ASSETS.iter().map(|a| a.body).chain([INDEX]);
        for source in sources {
            for import in source.split("from './").skip(1) {
                let name = import.split('\'').next().unwrap_or_default();
                assert!(ASSETS.iter().any(|a| a.name == name), "missing {name}");
            }
        }
    }
}
