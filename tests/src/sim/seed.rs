//! Demo workspace for the local stack: five contacts and three segments with memberships.

use serde_json::json;

use super::SimHandle;

/// Seed ~5 demo contacts and segments 1 "VIP" (manual), 2 "Trial" (dynamic),
/// 3 "Newsletter" (manual). Idempotent (people are upserted by email).
pub fn demo_seed(h: &SimHandle) {
    let people = [
        ("jane@example.com", "jane-1", "Jane", "Doe", "janed", "pro"),
        ("john@example.com", "john-2", "John", "Smith", "jsmith", "trial"),
        ("ana+news@example.com", "ana-3", "Ana", "García", "ana", "free"),
        ("li.wei@example.org", "li-4", "Li", "Wei", "liwei", "pro"),
        ("sam@example.net", "sam-5", "Sam", "O'Neil", "samo", "trial"),
    ];
    for (i, (email, id, first, last, user, plan)) in people.iter().enumerate() {
        h.add_person_with_id(
            Some(email),
            Some(id),
            json!({
                "First Name": first,
                "Last Name": last,
                "username": user,
                "plan": plan,
                "created_at": 1_700_000_000 + i as i64 * 86_400,
            }),
        );
    }
    h.add_segment(1, "VIP", "manual");
    h.add_segment(2, "Trial", "dynamic");
    h.add_segment(3, "Newsletter", "manual");
    for (seg, email) in [
        (1, "jane@example.com"),
        (1, "li.wei@example.org"),
        (2, "john@example.com"),
        (2, "sam@example.net"),
        (3, "jane@example.com"),
        (3, "ana+news@example.com"),
        (3, "sam@example.net"),
    ] {
        h.add_to_segment(seg, email);
    }
}
