//! The S3 answers rusty-s3 does not parse (error bodies and `ListMultipartUploads`), and
//! the check that an XML answer is whole: instant-xml (rusty-s3's parser too) takes a
//! document cut inside its root element as complete, which would read a cut listing as a
//! short one.

use instant_xml::FromXml;

const S3_NS: &str = "http://s3.amazonaws.com/doc/2006-03-01/";

/// The fields of an S3 `<Error>` body that matter to us.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct S3Error {
    pub code: String,
    pub message: String,
}

/// Reads `<Error><Code>…</Code><Message>…</Message>…</Error>`; `None` when `body` is not
/// one (an empty body, HTML from a proxy, a cut answer). Tolerant of namespaces and
/// element order, since it only classifies a failure.
pub(super) fn s3_error(body: &str) -> Option<S3Error> {
    let body = body.trim_start();
    let body = match body.strip_prefix("<?xml") {
        Some(rest) => rest.split_once("?>")?.1.trim_start(),
        None => body,
    };
    if !body.starts_with("<Error") || !body.trim_end().ends_with("</Error>") {
        return None;
    }
    Some(S3Error {
        code: element(body, "Code")?,
        message: element(body, "Message").unwrap_or_default(),
    })
}

/// The text of the first `<name>…</name>`, entities decoded.
fn element(body: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let start = body.find(&open)? + open.len();
    let end = start + body[start..].find(&format!("</{name}>"))?;
    Some(unescape(&body[start..end]))
}

fn unescape(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

/// Whether `body` ends with the closing tag of its root element `root` (with or without
/// a namespace prefix).
pub(super) fn closed(body: &str, root: &str) -> bool {
    let body = body.trim_end();
    body.ends_with(&format!("</{root}>")) || body.ends_with(&format!(":{root}>"))
}

/// One page of `ListMultipartUploads`.
#[derive(Debug, FromXml)]
#[xml(rename = "ListMultipartUploadsResult", ns(S3_NS))]
pub(super) struct UploadsPage {
    #[xml(rename = "IsTruncated")]
    pub is_truncated: Option<bool>,
    #[xml(rename = "NextKeyMarker")]
    pub next_key_marker: Option<String>,
    #[xml(rename = "NextUploadIdMarker")]
    pub next_upload_id_marker: Option<String>,
    #[xml(rename = "EncodingType")]
    pub encoding_type: Option<String>,
    pub uploads: Vec<UploadXml>,
}

#[derive(Debug, FromXml)]
#[xml(rename = "Upload", ns(S3_NS))]
pub(super) struct UploadXml {
    #[xml(rename = "Key")]
    pub key: String,
    #[xml(rename = "UploadId")]
    pub upload_id: String,
    #[xml(rename = "Initiated")]
    pub initiated: String,
}

pub(super) fn uploads_page(body: &str) -> Result<UploadsPage, instant_xml::Error> {
    instant_xml::from_str(body)
}

/// A key of a listing asked with `encoding-type=url`: `%XX` escapes, and `+` for a space
/// as AWS writes it (a literal `+` comes as `%2B`). Left as it is if it does not decode
/// to UTF-8.
pub(super) fn url_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = |b: u8| (b as char).to_digit(16);
                match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(hi), Some(lo)) => {
                        // Two hex digits: at most 255.
                        out.push((hi * 16 + lo) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|_| text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_are_read_and_anything_else_is_not_one() {
        let e = s3_error(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code>\
             <Message>Please reduce your request rate &amp; retry.</Message>\
             <RequestId>1</RequestId></Error>",
        )
        .unwrap();
        assert_eq!(e.code, "SlowDown");
        assert_eq!(e.message, "Please reduce your request rate & retry.");
        assert_eq!(
            s3_error("<Error><Code>NoSuchKey</Code></Error>")
                .unwrap()
                .message,
            ""
        );
        assert_eq!(s3_error("<Error><Code>SlowDo"), None);
        assert_eq!(s3_error(""), None);
        assert_eq!(s3_error("<html>bad gateway</html>"), None);
        assert_eq!(url_decode("a%2Fb+c%2Bd%"), "a/b c+d%");
        assert_eq!(url_decode("%C3%BC%zz"), "ü%zz");
        assert_eq!(url_decode("%FF"), "%FF");
    }

    #[test]
    fn upload_listings_parse_whole_or_not_at_all() {
        let page = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><ListMultipartUploadsResult xmlns=\"{S3_NS}\">\
             <Bucket>b</Bucket><KeyMarker></KeyMarker><NextKeyMarker>a%2Fk2</NextKeyMarker>\
             <NextUploadIdMarker>u2</NextUploadIdMarker><MaxUploads>2</MaxUploads>\
             <IsTruncated>true</IsTruncated>\
             <Upload><Key>a%2Fk1</Key><UploadId>u1</UploadId><Initiated>2024-01-01T00:00:00.000Z</Initiated></Upload>\
             <Upload><Key>a%2Fk2</Key><UploadId>u2</UploadId><Initiated>2024-01-02T00:00:00Z</Initiated></Upload>\
             </ListMultipartUploadsResult>"
        );
        let p = uploads_page(&page).unwrap();
        assert_eq!(p.uploads.len(), 2);
        assert_eq!(p.is_truncated, Some(true));
        assert_eq!(p.uploads[1].upload_id, "u2");
        let cut = &page[..page.len() - 40];
        assert!(uploads_page(cut).is_err());
        assert!(closed(&page, "ListMultipartUploadsResult"));
        // instant-xml alone takes a document cut inside the root as whole.
        let inside = &page[..page.find("<Upload>").unwrap()];
        assert!(uploads_page(inside).is_ok() && !closed(inside, "ListMultipartUploadsResult"));
        assert!(closed("<a:Root xmlns:a=\"x\"></a:Root>\n", "Root"));
    }
}
