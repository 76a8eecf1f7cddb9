//! The fake people behind the mock's verification results, and the JSON the provider
//! APIs answer with: Didit v3 and v2 decisions, session summaries, Veriff decisions.
//!
//! The people are the specimens printed on sample identity cards (Spain, Germany, France,
//! Italy): realistic in shape, with non-ASCII names and addresses, and belonging to no one.

use serde_json::{Value, json};

use crate::store::{Session, Status};
use crate::util;

/// Where the fake document images "live". `.invalid` never resolves.
const MEDIA_BASE: &str = "https://media.didit-mock.invalid";

pub(crate) struct Person {
    pub(crate) first_name: &'static str,
    pub(crate) last_name: &'static str,
    pub(crate) document_type: &'static str,
    pub(crate) document_number: &'static str,
    pub(crate) personal_number: &'static str,
    pub(crate) date_of_birth: &'static str,
    pub(crate) gender: &'static str,
    /// ISO 3166-1 alpha-3.
    pub(crate) nationality: &'static str,
    pub(crate) country_alpha2: &'static str,
    pub(crate) country_name: &'static str,
    pub(crate) place_of_birth: &'static str,
    pub(crate) street: &'static str,
    pub(crate) postal_code: &'static str,
    pub(crate) city: &'static str,
    pub(crate) region: &'static str,
    pub(crate) latitude: f64,
    pub(crate) longitude: f64,
    pub(crate) date_of_issue: &'static str,
    pub(crate) expiration_date: &'static str,
}

pub(crate) const PEOPLE: &[Person] = &[
    Person {
        first_name: "Carmen",
        last_name: "Española Española",
        document_type: "Identity Card",
        document_number: "BAA000589",
        personal_number: "99999999R",
        date_of_birth: "1980-01-01",
        gender: "F",
        nationality: "ESP",
        country_alpha2: "ES",
        country_name: "Spain",
        place_of_birth: "Madrid",
        street: "Avenida de España 34",
        postal_code: "28001",
        city: "Madrid",
        region: "Comunidad de Madrid",
        latitude: 40.4237,
        longitude: -3.6841,
        date_of_issue: "2021-06-02",
        expiration_date: "2031-06-02",
    },
    Person {
        first_name: "Erika",
        last_name: "Mustermann",
        document_type: "Identity Card",
        document_number: "T22000129",
        personal_number: "",
        date_of_birth: "1964-08-12",
        gender: "F",
        nationality: "DEU",
        country_alpha2: "DE",
        country_name: "Germany",
        place_of_birth: "Berlin",
        street: "Heidestraße 17",
        postal_code: "51147",
        city: "Köln",
        region: "Nordrhein-Westfalen",
        latitude: 50.8694,
        longitude: 7.0806,
        date_of_issue: "2020-11-01",
        expiration_date: "2030-10-31",
    },
    Person {
        first_name: "Maëlys-Gaëlle Marie",
        last_name: "Martin",
        document_type: "Identity Card",
        document_number: "X4RTBPFW4",
        personal_number: "",
        date_of_birth: "1990-07-13",
        gender: "F",
        nationality: "FRA",
        country_alpha2: "FR",
        country_name: "France",
        place_of_birth: "Paris",
        street: "12 Rue de la Paix",
        postal_code: "75002",
        city: "Paris",
        region: "Île-de-France",
        latitude: 48.8686,
        longitude: 2.3306,
        date_of_issue: "2021-03-11",
        expiration_date: "2031-03-10",
    },
    Person {
        first_name: "Giovanni",
        last_name: "Rossi",
        document_type: "Passport",
        document_number: "YA0000000",
        personal_number: "RSSGNN85C23H501Z",
        date_of_birth: "1985-03-23",
        gender: "M",
        nationality: "ITA",
        country_alpha2: "IT",
        country_name: "Italy",
        place_of_birth: "Roma",
        street: "Via del Corso 101",
        postal_code: "00186",
        city: "Roma",
        region: "Lazio",
        latitude: 41.9009,
        longitude: 12.4801,
        date_of_issue: "2019-09-30",
        expiration_date: "2029-09-29",
    },
];

impl Person {
    pub(crate) fn for_session_number(number: u64) -> &'static Person {
        let i = usize::try_from(number.saturating_sub(1)).unwrap_or(0) % PEOPLE.len();
        &PEOPLE[i]
    }

    pub(crate) fn full_name(&self) -> String {
        format!("{} {}", self.first_name, self.last_name)
    }

    fn address(&self) -> String {
        format!("{}, {} {}", self.street, self.postal_code, self.city)
    }

    fn formatted_address(&self) -> String {
        format!(
            "{}, {} {}, {}, {}",
            self.street, self.postal_code, self.city, self.region, self.country_name
        )
    }
}

/// The person a session's checks read, once they have run.
pub(crate) fn listed_person(session: &Session) -> Option<&'static Person> {
    session
        .checks_run
        .then(|| Person::for_session_number(session.number))
}

/// A risk warning as Didit attaches to a check.
fn warning(risk: &str, short: &str, long: &str) -> Value {
    json!({
        "risk": risk,
        "additional_data": null,
        "log_type": "warning",
        "short_description": short,
        "long_description": long,
    })
}

/// The status of each check given the session's: all checks pass for an approved session;
/// a declined one failed the document check, one in review has a weak face match.
fn check_status(session: Status, check: Check) -> (&'static str, Vec<Value>) {
    match (session, check) {
        (Status::Approved | Status::KycExpired, _) => ("Approved", vec![]),
        (Status::Declined, Check::IdVerification) => (
            "Declined",
            vec![warning(
                "DOCUMENT_EXPIRED",
                "Document expired",
                "The document's expiration date is in the past.",
            )],
        ),
        (Status::Declined, _) => ("Approved", vec![]),
        (Status::InReview, Check::FaceMatch) => (
            "In Review",
            vec![warning(
                "LOW_FACE_MATCH_SIMILARITY",
                "Low face match similarity",
                "The selfie and the document portrait are not clearly the same person.",
            )],
        ),
        (Status::InReview, _) => ("Approved", vec![]),
        _ => ("Not Finished", vec![]),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Check {
    IdVerification,
    Liveness,
    FaceMatch,
    Aml,
}

fn media(session: &Session, name: &str) -> String {
    format!("{MEDIA_BASE}/{}/{name}", session.id)
}

fn id_verification(session: &Session, p: &Person) -> Value {
    let (status, warnings) = check_status(session.status, Check::IdVerification);
    let today = util::iso_date(util::unix_now());
    json!({
        "node_id": "feature_ocr",
        "status": status,
        "document_type": p.document_type,
        "document_number": p.document_number,
        "personal_number": if p.personal_number.is_empty() { Value::Null } else { json!(p.personal_number) },
        "portrait_image": media(session, "portrait.jpg"),
        "front_image": media(session, "front.jpg"),
        "front_video": media(session, "front.mp4"),
        "back_image": media(session, "back.jpg"),
        "back_video": media(session, "back.mp4"),
        "full_front_image": media(session, "full_front.jpg"),
        "full_back_image": media(session, "full_back.jpg"),
        "date_of_birth": p.date_of_birth,
        "age": util::age_on(p.date_of_birth, &today),
        "expiration_date": p.expiration_date,
        "date_of_issue": p.date_of_issue,
        "issuing_state": p.nationality,
        "issuing_state_name": p.country_name,
        "first_name": p.first_name,
        "last_name": p.last_name,
        "full_name": p.full_name(),
        "gender": p.gender,
        "address": p.address(),
        "formatted_address": p.formatted_address(),
        "place_of_birth": p.place_of_birth,
        "marital_status": "UNKNOWN",
        "nationality": p.nationality,
        "parsed_address": {
            "address_type": "Residential",
            "street_1": p.street,
            "street_2": null,
            "city": p.city,
            "region": p.region,
            "postal_code": p.postal_code,
            "country": p.country_alpha2,
            "raw_results": null,
            "document_location": {"latitude": p.latitude, "longitude": p.longitude},
        },
        "extra_files": [],
        "warnings": warnings,
    })
}

fn liveness(session: &Session) -> Value {
    let (status, warnings) = check_status(session.status, Check::Liveness);
    json!({
        "node_id": "feature_liveness",
        "status": status,
        "method": "ACTIVE_3D",
        "score": 89.92,
        "reference_image": media(session, "selfie.jpg"),
        "video_url": media(session, "selfie.mp4"),
        "age_estimation": 38.6,
        "matches": [],
        "warnings": warnings,
    })
}

fn face_match(session: &Session) -> Value {
    let (status, warnings) = check_status(session.status, Check::FaceMatch);
    let score = if status == "In Review" { 41.3 } else { 94.76 };
    json!({
        "node_id": "feature_face",
        "status": status,
        "score": score,
        "source_image": media(session, "selfie.jpg"),
        "target_image": media(session, "portrait.jpg"),
        "warnings": warnings,
    })
}

fn aml(session: &Session, p: &Person) -> Value {
    let (status, warnings) = check_status(session.status, Check::Aml);
    json!({
        "node_id": "feature_aml",
        "status": status,
        "total_hits": 0,
        // A whole-number float on purpose: webhooks write it as `0`, which receivers that
        // re-serialise must reproduce to verify X-Signature-V2.
        "score": 0.0,
        "hits": [],
        "screened_data": {
            "full_name": p.full_name(),
            "nationality": p.nationality,
            "date_of_birth": p.date_of_birth,
            "document_number": p.document_number,
        },
        "warnings": warnings,
    })
}

/// Which API generation shapes the decision: v3 lists checks in arrays, v2 has one object
/// per check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ApiVersion {
    V2,
    V3,
}

/// `GET /v3/session/{id}/decision/` (or `/v2/`). Each check's block is `null` until the
/// workflow has run it (and for checks the workflow does not have).
pub(crate) fn decision(session: &Session, version: ApiVersion) -> Value {
    let p = Person::for_session_number(session.number);
    let ran = |f: &str| session.checks_run && session.features.iter().any(|x| x == f);
    let mut d = json!({
        "session_id": session.id,
        "session_number": session.number,
        "session_url": session.url,
        "session_kind": "user",
        "environment": "sandbox",
        "status": session.status.as_str(),
        "workflow_id": session.workflow_id,
        "workflow_version": 1,
        "features": session.features,
        "vendor_data": session.vendor_data,
        "metadata": session.metadata,
        "callback": session.callback,
        "expected_details": session.expected_details,
        "contact_details": session.contact_details,
        "reviews": session.reviews,
        "created_at": util::iso8601_micros(session.created_at_micros),
    });
    let checks: [(&str, &str, Option<Value>); 4] = [
        (
            "id_verifications",
            "id_verification",
            ran("ID_VERIFICATION").then(|| id_verification(session, p)),
        ),
        (
            "liveness_checks",
            "liveness",
            ran("LIVENESS").then(|| liveness(session)),
        ),
        (
            "face_matches",
            "face_match",
            ran("FACE_MATCH").then(|| face_match(session)),
        ),
        ("aml_screenings", "aml", ran("AML").then(|| aml(session, p))),
    ];
    if let Value::Object(map) = &mut d {
        for (v3_key, v2_key, item) in checks {
            match version {
                ApiVersion::V3 => {
                    map.insert(
                        v3_key.to_owned(),
                        item.map_or(Value::Null, |i| Value::Array(vec![i])),
                    );
                }
                ApiVersion::V2 => {
                    map.insert(v2_key.to_owned(), item.unwrap_or(Value::Null));
                }
            }
        }
    }
    d
}

/// What `POST /v3/session/` answers (and the idempotent repeat of it).
pub(crate) fn created_session(session: &Session) -> Value {
    json!({
        "session_id": session.id,
        "session_number": session.number,
        "session_token": session.token,
        "url": session.url,
        "vendor_data": session.vendor_data,
        "metadata": session.metadata,
        "status": session.status.as_str(),
        "workflow_id": session.workflow_id,
        "callback": session.callback,
    })
}

/// One row of `GET /v3/sessions/`: the person's name, document and country once the
/// checks have run, and each feature with its status.
pub(crate) fn session_row(session: &Session) -> Value {
    let person = listed_person(session);
    let features: Vec<Value> = session
        .features
        .iter()
        .map(|f| {
            let status = match check_of(f) {
                Some(check) if session.checks_run => check_status(session.status, check).0,
                _ => "Not Finished",
            };
            json!({"feature": f, "status": status})
        })
        .collect();
    json!({
        "session_id": session.id,
        "session_number": session.number,
        "session_url": session.url,
        "session_kind": "user",
        "status": session.status.as_str(),
        "vendor_data": session.vendor_data,
        "metadata": session.metadata,
        "workflow_id": session.workflow_id,
        "full_name": person.map(Person::full_name),
        "document_type": person.map(|p| p.document_type),
        "country": person.map(|p| p.nationality),
        "features": features,
        "created_at": util::iso8601_micros(session.created_at_micros),
    })
}

fn check_of(feature: &str) -> Option<Check> {
    match feature {
        "ID_VERIFICATION" => Some(Check::IdVerification),
        "LIVENESS" => Some(Check::Liveness),
        "FACE_MATCH" => Some(Check::FaceMatch),
        "AML" => Some(Check::Aml),
        _ => None,
    }
}

/// `GET /v1/sessions/{id}/decision` in Veriff's shape: `verification` is null until the
/// session has a decision. Codes and reasons as Veriff documents them: approved 9001,
/// declined 9102, resubmission_requested 9103, expired 9104, review 9121; reason 102
/// "suspected document tampering" (the decline's), 207 an expired document (the
/// resubmission's). The code of an abandoned session is not settled by Veriff's documents:
/// it is `abandoned_code` (`null` unless the mock is told one), never another status's
/// code. `person` and `document` are `null` when the checks never ran (an expired session,
/// or one abandoned before its result): there was nothing to read them from.
pub(crate) fn veriff_decision(session: &Session, abandoned_code: Option<u16>) -> Value {
    let (status, code, reason): (&str, Value, Option<(u16, &str)>) = match session.status {
        Status::Approved => ("approved", json!(9001), None),
        Status::Declined => (
            "declined",
            json!(9102),
            Some((102, "Suspected document tampering")),
        ),
        Status::Resubmitted => (
            "resubmission_requested",
            json!(9103),
            Some((207, "Document expired")),
        ),
        Status::Expired => ("expired", json!(9104), None),
        Status::Abandoned => ("abandoned", json!(abandoned_code), None),
        Status::InReview => ("review", json!(9121), None),
        _ => return json!({"status": "success", "verification": null}),
    };
    let p = Person::for_session_number(session.number);
    let decided = util::iso8601_micros(util::unix_now_micros());
    let (person, document) = if session.checks_run {
        (
            json!({
                "firstName": p.first_name,
                "lastName": p.last_name,
                "dateOfBirth": p.date_of_birth,
                "gender": p.gender,
                "idNumber": if p.personal_number.is_empty() { Value::Null } else { json!(p.personal_number) },
                "nationality": p.country_alpha2,
                "placeOfBirth": p.place_of_birth,
            }),
            json!({
                "number": p.document_number,
                "type": if p.document_type == "Passport" { "PASSPORT" } else { "ID_CARD" },
                "country": p.country_alpha2,
                "validFrom": p.date_of_issue,
                "validUntil": p.expiration_date,
            }),
        )
    } else {
        (Value::Null, Value::Null)
    };
    json!({
        "status": "success",
        "verification": {
            "id": session.id,
            "code": code,
            "status": status,
            "reason": reason.map(|(_, text)| text),
            "reasonCode": reason.map(|(code, _)| code),
            "vendorData": session.vendor_data,
            "person": person,
            "document": document,
            "acceptanceTime": util::iso8601_micros(session.created_at_micros),
            "decisionTime": decided,
        },
    })
}
