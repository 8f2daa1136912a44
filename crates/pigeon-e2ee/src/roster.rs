//! The roster: who is in a group, under which name, on which device, and who is an admin.
//!
//! MLS knows leaves and their signature keys; people know names. The roster maps each leaf's
//! signature key to the person and device it belongs to, and says who may change the group.
//! It lives in the group context (a private extension, [`ROSTER_EXTENSION`]), so every
//! member holds the same roster in the same epoch, the confirmation tag of every commit
//! covers it, and a Welcome carries it to a new member. A commit that changes membership
//! must change the roster to match (a GroupContextExtensions proposal in the same commit).
//!
//! The rules ([`check_commit`]) are evaluated by every member on every commit, before it is
//! merged, from nothing but the old roster and the commit, so every member reaches the same
//! verdict: a commit that breaks them is invalid everywhere and the next commit in the
//! group's log order is taken instead.
//!
//! * Only admins add members, remove other members, promote, or rename the group.
//! * A member adds and removes its own devices (entries under its own person id and name):
//!   a person vouches for their own devices (issue #16), and everyone sees them come and go.
//! * Anyone may commit a member's own request to leave (a self-remove proposal), and anyone
//!   may commit a plain key refresh.
//! * The roster after the commit lists exactly the group's devices, each once, and at least
//!   one admin.
//! * Entries of members who stay are not rewritten, except an admin flag set by an admin.

use prost::Message as _;
use std::collections::{BTreeMap, BTreeSet};

/// The private group-context extension type that holds the roster (from the range RFC 9420
/// leaves to private use, 0xF000–0xFFFF).
pub const ROSTER_EXTENSION: u16 = 0xF7A1;
/// Longest group name, in characters.
pub const MAX_GROUP_NAME_CHARS: usize = 64;
/// Most devices a group may hold.
pub const MAX_MEMBERS: usize = 16_384;

/// Who is in the group.
#[derive(Clone, PartialEq, Eq, prost::Message)]
#[prost(skip_debug)]
pub struct Roster {
    /// The group's name, as its admins set it.
    #[prost(string, tag = "1")]
    pub name: String,
    /// One entry per device (leaf), in no particular order.
    #[prost(message, repeated, tag = "2")]
    pub members: Vec<RosterEntry>,
    /// A conversation between two people (a contact): no name, and never more than two
    /// people in it (each may have several devices). Fixed when the group is created.
    #[prost(bool, tag = "3")]
    pub direct: bool,
    /// The group of one person's own devices (issue #16): no name, one person. Its devices
    /// hand each other key packages there, so that any of them adds the others to a new
    /// conversation. Fixed when the group is created.
    #[prost(bool, tag = "4")]
    pub devices: bool,
}

/// One device of one person in a group.
#[derive(Clone, PartialEq, Eq, prost::Message)]
#[prost(skip_debug)]
pub struct RosterEntry {
    /// The device's signature key in this group (its leaf's credential).
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    /// A random id for the person, the same for each of the person's devices in this group
    /// (and different in every group, so it links nothing).
    #[prost(bytes = "vec", tag = "2")]
    pub person: Vec<u8>,
    /// The name the person goes by.
    #[prost(string, tag = "3")]
    pub name: String,
    /// The device's name ("phone", "laptop").
    #[prost(string, tag = "4")]
    pub device: String,
    /// May add, remove and promote members and rename the group.
    #[prost(bool, tag = "5")]
    pub admin: bool,
}

impl std::fmt::Debug for Roster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Roster")
            .field("members", &self.members.len())
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for RosterEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RosterEntry")
            .field("admin", &self.admin)
            .finish_non_exhaustive()
    }
}

impl Roster {
    /// Decodes and checks a roster.
    ///
    /// # Errors
    /// A sentence saying what is wrong.
    pub fn decode_checked(bytes: &[u8]) -> Result<Self, String> {
        let roster = Self::decode(bytes).map_err(|e| format!("the roster does not decode: {e}"))?;
        roster.check()?;
        Ok(roster)
    }

    /// Checks names, sizes and that every key appears once.
    ///
    /// # Errors
    /// A sentence saying what is wrong.
    pub fn check(&self) -> Result<(), String> {
        if self.devices {
            let people: BTreeSet<&[u8]> =
                self.members.iter().map(|m| m.person.as_slice()).collect();
            if self.direct || !self.name.is_empty() || people.len() > 1 {
                return Err(
                    "the group of one person's devices has a name, or someone else in it"
                        .to_owned(),
                );
            }
        } else if self.direct {
            if !self.name.is_empty() {
                return Err("a conversation between two people has no name".to_owned());
            }
            let people: BTreeSet<&[u8]> =
                self.members.iter().map(|m| m.person.as_slice()).collect();
            if people.len() > 2 {
                return Err(
                    "a conversation between two people lists more than two people".to_owned(),
                );
            }
        } else {
            check_group_name(&self.name)?;
        }
        if self.members.len() > MAX_MEMBERS {
            return Err(format!("the roster lists more than {MAX_MEMBERS} devices"));
        }
        let mut keys = BTreeSet::new();
        for m in &self.members {
            if m.key.len() != 32 {
                return Err("a roster key is not 32 bytes".to_owned());
            }
            if m.person.len() != 16 {
                return Err("a roster person id is not 16 bytes".to_owned());
            }
            if m.name.trim().is_empty() || m.name.chars().count() > 64 {
                return Err("a member's name is empty or longer than 64 characters".to_owned());
            }
            if m.device.chars().count() > 64 {
                return Err("a device name is longer than 64 characters".to_owned());
            }
            if !keys.insert(m.key.as_slice()) {
                return Err("a device appears twice in the roster".to_owned());
            }
        }
        Ok(())
    }

    /// The entry for signature key `key`.
    pub fn entry(&self, key: &[u8]) -> Option<&RosterEntry> {
        self.members.iter().find(|m| m.key == key)
    }

    /// True when `key` belongs to an admin.
    pub fn is_admin(&self, key: &[u8]) -> bool {
        self.entry(key).is_some_and(|m| m.admin)
    }

    /// The roster without the devices whose keys are in `keys`.
    pub fn without(&self, keys: &BTreeSet<Vec<u8>>) -> Self {
        Self {
            name: self.name.clone(),
            direct: self.direct,
            devices: self.devices,
            members: self
                .members
                .iter()
                .filter(|m| !keys.contains(&m.key))
                .cloned()
                .collect(),
        }
    }

    fn by_key(&self) -> BTreeMap<&[u8], &RosterEntry> {
        self.members.iter().map(|m| (m.key.as_slice(), m)).collect()
    }
}

/// Checks a group name.
///
/// # Errors
/// A sentence saying what is wrong.
pub fn check_group_name(name: &str) -> Result<(), String> {
    if name.trim().is_empty() {
        return Err("the group name is empty".to_owned());
    }
    if name.chars().count() > MAX_GROUP_NAME_CHARS {
        return Err(format!(
            "the group name is longer than {MAX_GROUP_NAME_CHARS} characters"
        ));
    }
    if name.chars().any(char::is_control) {
        return Err("the group name holds control characters".to_owned());
    }
    Ok(())
}

/// What a commit does, as [`check_commit`] sees it.
#[derive(Debug, Default)]
pub struct CommitShape {
    /// Signature key of the committing device.
    pub committer: Vec<u8>,
    /// Signature keys of the devices the commit adds.
    pub added: BTreeSet<Vec<u8>>,
    /// Signature keys of the devices the commit removes.
    pub removed: BTreeSet<Vec<u8>>,
    /// Of `removed`, those that asked to leave themselves (self-remove proposals).
    pub left: BTreeSet<Vec<u8>>,
    /// Of both `removed` and `added`: devices taken back with a new leaf (a rejoin whose
    /// ticket the caller checked). They keep their roster entries.
    pub rejoined: BTreeSet<Vec<u8>>,
    /// Devices restored from a backup: the key of the device replaced (in `removed`) to the
    /// restored device's key (in `added`), whose backup secret the caller checked. The
    /// restored device takes over the replaced one's roster entry.
    pub restored: BTreeMap<Vec<u8>, Vec<u8>>,
    /// The roster the commit installs (`None`: unchanged).
    pub new_roster: Option<Roster>,
}

/// Applies the group's rules to a commit. `old` is the roster before it; `members` are the
/// signature keys of the devices in the group before it.
///
/// # Errors
/// A sentence naming the broken rule.
pub fn check_commit(
    old: &Roster,
    members: &BTreeSet<Vec<u8>>,
    shape: &CommitShape,
) -> Result<Roster, String> {
    if !shape.restored.is_empty() {
        return check_restores(old, members, shape);
    }
    let committer_admin = old.is_admin(&shape.committer);
    if !shape.rejoined.is_subset(&shape.added)
        || !shape.rejoined.is_subset(&shape.removed)
        || !shape.rejoined.is_disjoint(&shape.left)
    {
        return Err("a device taken back is not both removed and added".to_owned());
    }
    if shape
        .removed
        .intersection(&shape.added)
        .any(|k| !shape.rejoined.contains(k))
    {
        return Err("a commit removes and adds the same device without its ticket".to_owned());
    }
    // Taking back a device that fell behind is anyone's to commit: its ticket proves it.
    let added: BTreeSet<_> = shape.added.difference(&shape.rejoined).cloned().collect();
    let by_others: BTreeSet<_> = shape
        .removed
        .difference(&shape.left)
        .filter(|k| !shape.rejoined.contains(*k))
        .cloned()
        .collect();
    // A person's own devices are that person's to add and remove: a member who is not an
    // admin may remove its own other devices (their entries carry its person id), and add
    // devices under its own entry (checked below, once the new roster is known).
    let committer_person = old.entry(&shape.committer).map(|e| e.person.as_slice());
    let own_device = |key: &Vec<u8>| {
        old.entry(key)
            .is_some_and(|e| Some(e.person.as_slice()) == committer_person)
    };
    if !committer_admin && by_others.iter().any(|k| !own_device(k)) {
        return Err("a member who is not an admin removed someone else".to_owned());
    }
    if shape.removed.contains(&shape.committer) {
        return Err("a commit removes its own committer".to_owned());
    }
    let mut after: BTreeSet<Vec<u8>> = members.difference(&shape.removed).cloned().collect();
    for key in &shape.added {
        if !after.insert(key.clone()) {
            return Err("a commit adds a device that is already a member".to_owned());
        }
    }
    let new = match &shape.new_roster {
        Some(r) => r.clone(),
        None => {
            if !added.is_empty() || shape.removed.len() > shape.rejoined.len() {
                return Err("a commit changes members without changing the roster".to_owned());
            }
            return Ok(old.clone());
        }
    };
    if new.direct != old.direct || new.devices != old.devices {
        return Err("a commit changes what kind of group it is".to_owned());
    }
    new.check()?;
    let listed: BTreeSet<Vec<u8>> = new.members.iter().map(|m| m.key.clone()).collect();
    if listed != after {
        return Err("the new roster does not list exactly the group's devices".to_owned());
    }
    if !new.members.iter().any(|m| m.admin) {
        return Err("the new roster has no admin".to_owned());
    }
    if new.name != old.name && !committer_admin {
        return Err("a member who is not an admin renamed the group".to_owned());
    }
    if !committer_admin && !added.is_empty() {
        // Only devices of the committer's own: its person id and its name.
        let Some(me) = old.entry(&shape.committer) else {
            return Err("the committer is not in the roster".to_owned());
        };
        let foreign = new
            .members
            .iter()
            .filter(|m| added.contains(&m.key))
            .any(|m| m.person != me.person || m.name != me.name);
        if foreign {
            return Err("a member who is not an admin added someone".to_owned());
        }
    }
    let old_by_key = old.by_key();
    for m in &new.members {
        match old_by_key.get(m.key.as_slice()) {
            Some(before) => {
                let same_but_admin =
                    before.person == m.person && before.name == m.name && before.device == m.device;
                if !same_but_admin {
                    return Err("a commit rewrites a member's entry".to_owned());
                }
                if before.admin != m.admin && !committer_admin {
                    return Err("a member who is not an admin changed who is admin".to_owned());
                }
            }
            None if m.admin && !committer_admin => {
                return Err("a new member is made admin by a non-admin".to_owned());
            }
            None => {}
        }
    }
    Ok(new)
}

/// A commit that restores devices from backups is anyone's to make for those devices (their
/// backup secrets prove them): it is checked as if each restored device had always held the
/// replaced one's key, which makes its entry one that stays, unchanged but for the key.
fn check_restores(
    old: &Roster,
    members: &BTreeSet<Vec<u8>>,
    shape: &CommitShape,
) -> Result<Roster, String> {
    let olds: BTreeSet<Vec<u8>> = shape.restored.keys().cloned().collect();
    let news: BTreeSet<Vec<u8>> = shape.restored.values().cloned().collect();
    if news.len() != olds.len()
        || !olds.is_subset(&shape.removed)
        || !news.is_subset(&shape.added)
        || !olds.is_disjoint(&shape.left)
        || !olds.is_disjoint(&shape.rejoined)
        || !news.is_disjoint(&shape.rejoined)
        || news.iter().any(|k| members.contains(k))
    {
        return Err(
            "a device restored from a backup does not replace exactly one device".to_owned(),
        );
    }
    if olds.contains(&shape.committer) {
        return Err("a commit removes its own committer".to_owned());
    }
    let renamed = |key: &Vec<u8>| shape.restored.get(key).unwrap_or(key).clone();
    let mut before = old.clone();
    for m in &mut before.members {
        m.key = renamed(&m.key);
    }
    let members: BTreeSet<Vec<u8>> = members.iter().map(renamed).collect();
    let inner =
        CommitShape {
            committer: shape.committer.clone(),
            added: shape.added.difference(&news).cloned().collect(),
            removed: shape.removed.difference(&olds).cloned().collect(),
            left: shape.left.clone(),
            rejoined: shape.rejoined.clone(),
            restored: BTreeMap::new(),
            // A restore changes the roster (a key), so the commit must carry one.
            new_roster: Some(shape.new_roster.clone().ok_or_else(|| {
                "a commit restores a device without changing the roster".to_owned()
            })?),
        };
    check_commit(&before, &members, &inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(k: u8, admin: bool) -> RosterEntry {
        RosterEntry {
            key: vec![k; 32],
            person: vec![k; 16],
            name: format!("m{k}"),
            device: String::new(),
            admin,
        }
    }

    fn roster(entries: &[(u8, bool)]) -> Roster {
        Roster {
            name: "family".to_owned(),
            members: entries.iter().map(|(k, a)| entry(*k, *a)).collect(),
            direct: false,
            devices: false,
        }
    }

    fn keys(ks: &[u8]) -> BTreeSet<Vec<u8>> {
        ks.iter().map(|k| vec![*k; 32]).collect()
    }

    #[test]
    fn anyone_lets_a_restored_device_take_its_place_under_the_same_entry_only() {
        let old = roster(&[(1, true), (2, false), (3, false)]);
        let members = keys(&[1, 2, 3]);
        let restored_entry = |admin: bool, name: &str| {
            let mut e = entry(3, admin);
            e.key = vec![9; 32];
            e.name = name.to_owned();
            e
        };
        let with = |e: RosterEntry| Roster {
            members: vec![entry(1, true), entry(2, false), e],
            ..old.clone()
        };
        let shape = |new_roster: Option<Roster>| CommitShape {
            committer: vec![2; 32],
            added: keys(&[9]),
            removed: keys(&[3]),
            restored: [(vec![3; 32], vec![9; 32])].into_iter().collect(),
            new_roster,
            ..CommitShape::default()
        };
        // A member who is not an admin moves 3's entry to the restored key 9.
        let fine = with(restored_entry(false, "m3"));
        assert_eq!(
            check_commit(&old, &members, &shape(Some(fine.clone()))),
            Ok(fine)
        );
        // Not without the new roster, not with the entry rewritten or made admin.
        assert!(check_commit(&old, &members, &shape(None)).is_err());
        let renamed = with(restored_entry(false, "mallory"));
        assert!(check_commit(&old, &members, &shape(Some(renamed))).is_err());
        let admin = with(restored_entry(true, "m3"));
        assert!(check_commit(&old, &members, &shape(Some(admin))).is_err());
        // Not in place of the committer, nor under a key already in the group.
        let mut own = shape(Some(with(restored_entry(false, "m3"))));
        own.committer = vec![3; 32];
        assert!(check_commit(&old, &members, &own).is_err());
        let mut taken = shape(Some(with(restored_entry(false, "m3"))));
        taken.restored = [(vec![3; 32], vec![1; 32])].into_iter().collect();
        taken.added = keys(&[1]);
        assert!(check_commit(&old, &members, &taken).is_err());
    }

    #[test]
    fn anyone_takes_back_a_device_with_its_ticket_and_nobody_without() {
        let old = roster(&[(1, true), (2, false), (3, false)]);
        let members = keys(&[1, 2, 3]);
        // A member who is not an admin takes 3 back (the caller checked its ticket); the
        // roster stays as it was.
        let rejoin = CommitShape {
            committer: vec![2; 32],
            added: keys(&[3]),
            removed: keys(&[3]),
            rejoined: keys(&[3]),
            ..CommitShape::default()
        };
        assert_eq!(check_commit(&old, &members, &rejoin), Ok(old.clone()));
        // The same removal and add without a checked ticket is refused, from an admin too.
        let swap = CommitShape {
            committer: vec![1; 32],
            added: keys(&[3]),
            removed: keys(&[3]),
            ..CommitShape::default()
        };
        assert!(check_commit(&old, &members, &swap).is_err());
        // A rejoin does not carry anything else for a member who is not an admin.
        let more = CommitShape {
            committer: vec![2; 32],
            added: keys(&[3, 4]),
            removed: keys(&[3]),
            rejoined: keys(&[3]),
            new_roster: Some(roster(&[(1, true), (2, false), (3, false), (4, false)])),
            ..CommitShape::default()
        };
        assert!(check_commit(&old, &members, &more).is_err());
        // Nor may it rewrite the device's entry (make it admin).
        let promote = CommitShape {
            committer: vec![2; 32],
            added: keys(&[3]),
            removed: keys(&[3]),
            rejoined: keys(&[3]),
            new_roster: Some(roster(&[(1, true), (2, false), (3, true)])),
            ..CommitShape::default()
        };
        assert!(check_commit(&old, &members, &promote).is_err());
        // Nor take back a device that asked to leave.
        let left = CommitShape {
            committer: vec![2; 32],
            added: keys(&[3]),
            removed: keys(&[3]),
            left: keys(&[3]),
            rejoined: keys(&[3]),
            ..CommitShape::default()
        };
        assert!(check_commit(&old, &members, &left).is_err());
    }

    #[test]
    fn only_admins_change_membership_and_rosters_must_match() {
        let old = roster(&[(1, true), (2, false), (3, false)]);
        let members = keys(&[1, 2, 3]);
        // An admin adds 4.
        let add = CommitShape {
            committer: vec![1; 32],
            added: keys(&[4]),
            new_roster: Some(roster(&[(1, true), (2, false), (3, false), (4, false)])),
            ..CommitShape::default()
        };
        assert!(check_commit(&old, &members, &add).is_ok());
        // A member does the same: refused.
        let by_member = CommitShape {
            committer: vec![2; 32],
            ..add
        };
        assert!(check_commit(&old, &members, &by_member).is_err());
        // The roster must match the tree.
        let mismatch = CommitShape {
            committer: vec![1; 32],
            added: keys(&[4]),
            new_roster: Some(roster(&[(1, true), (2, false), (3, false)])),
            ..CommitShape::default()
        };
        assert!(check_commit(&old, &members, &mismatch).is_err());
        // A member commits 3's own request to leave.
        let leave = CommitShape {
            committer: vec![2; 32],
            removed: keys(&[3]),
            left: keys(&[3]),
            new_roster: Some(roster(&[(1, true), (2, false)])),
            ..CommitShape::default()
        };
        assert!(check_commit(&old, &members, &leave).is_ok());
        // A member promotes itself: refused; an admin promotes it: fine.
        let promote = CommitShape {
            committer: vec![2; 32],
            new_roster: Some(roster(&[(1, true), (2, true), (3, false)])),
            ..CommitShape::default()
        };
        assert!(check_commit(&old, &members, &promote).is_err());
        let promote = CommitShape {
            committer: vec![1; 32],
            ..promote
        };
        assert!(check_commit(&old, &members, &promote).is_ok());
        // No admin left: refused.
        let headless = CommitShape {
            committer: vec![1; 32],
            new_roster: Some(roster(&[(1, false), (2, false), (3, false)])),
            ..CommitShape::default()
        };
        assert!(check_commit(&old, &members, &headless).is_err());
        // A plain refresh by anyone: fine.
        let refresh = CommitShape {
            committer: vec![3; 32],
            ..CommitShape::default()
        };
        assert!(check_commit(&old, &members, &refresh).is_ok());
        // Renaming by a member: refused.
        let mut renamed = old.clone();
        renamed.name = "other".to_owned();
        let rename = CommitShape {
            committer: vec![2; 32],
            new_roster: Some(renamed),
            ..CommitShape::default()
        };
        assert!(check_commit(&old, &members, &rename).is_err());
    }

    #[test]
    fn a_member_adds_and_removes_only_its_own_devices() {
        let old = roster(&[(1, true), (2, false), (3, false)]);
        let members = keys(&[1, 2, 3]);
        // 2 adds its laptop (4) under its own person id and name.
        let mut with_laptop = old.clone();
        with_laptop.members.push(RosterEntry {
            device: "laptop".to_owned(),
            ..entry(2, false)
        });
        with_laptop.members[3].key = vec![4; 32];
        let add_own = CommitShape {
            committer: vec![2; 32],
            added: keys(&[4]),
            new_roster: Some(with_laptop.clone()),
            ..CommitShape::default()
        };
        assert!(check_commit(&old, &members, &add_own).is_ok());
        // The same device under another person's id, or another name, or as an admin: refused.
        for change in [
            |e: &mut RosterEntry| e.person = vec![3; 16],
            |e: &mut RosterEntry| e.name = "m3".to_owned(),
            |e: &mut RosterEntry| e.admin = true,
        ] {
            let mut r = with_laptop.clone();
            change(&mut r.members[3]);
            let shape = CommitShape {
                committer: vec![2; 32],
                added: keys(&[4]),
                new_roster: Some(r),
                ..CommitShape::default()
            };
            assert!(check_commit(&old, &members, &shape).is_err());
        }
        // 2 removes its laptop again; 3 may not.
        let members = keys(&[1, 2, 3, 4]);
        let remove = |by: u8| CommitShape {
            committer: vec![by; 32],
            removed: keys(&[4]),
            new_roster: Some(old.clone()),
            ..CommitShape::default()
        };
        assert!(check_commit(&with_laptop, &members, &remove(2)).is_ok());
        assert!(check_commit(&with_laptop, &members, &remove(3)).is_err());
        // Nor may 2 remove 3.
        let other = CommitShape {
            committer: vec![2; 32],
            removed: keys(&[3]),
            new_roster: Some(with_laptop.without(&keys(&[3]))),
            ..CommitShape::default()
        };
        assert!(check_commit(&with_laptop, &members, &other).is_err());
    }

    #[test]
    fn garbage_rosters_are_refused_with_a_reason() {
        assert!(Roster::decode_checked(&[0xff, 0xff]).is_err());
        let mut dup = roster(&[(1, true), (1, false)]);
        assert!(dup.check().is_err());
        dup.members.truncate(1);
        assert!(dup.check().is_ok());
        dup.name = "\u{1b}[2J".to_owned();
        assert!(dup.check().is_err());
    }

    #[test]
    fn a_conversation_of_two_stays_one() {
        let mut two = roster(&[(1, true), (2, true)]);
        two.name = String::new();
        two.direct = true;
        assert!(two.check().is_ok());
        // A name, or a third person, breaks it.
        let mut named = two.clone();
        named.name = "family".to_owned();
        assert!(named.check().is_err());
        let mut three = roster(&[(1, true), (2, true), (3, false)]);
        three.name = String::new();
        three.direct = true;
        assert!(three.check().is_err());
        // A second device of the same person fits (several devices, #16).
        let mut device = three.clone();
        device.members[2].person = vec![2; 16];
        assert!(device.check().is_ok());
        let members = keys(&[1, 2]);
        let add_person = CommitShape {
            committer: vec![1; 32],
            added: keys(&[3]),
            new_roster: Some(three),
            ..CommitShape::default()
        };
        assert!(check_commit(&two, &members, &add_person).is_err());
        let add_device = CommitShape {
            committer: vec![1; 32],
            added: keys(&[3]),
            new_roster: Some(device),
            ..CommitShape::default()
        };
        assert!(check_commit(&two, &members, &add_device).is_ok());
        // Nobody turns a group into a conversation of two or back.
        let mut undirect = two.clone();
        undirect.direct = false;
        undirect.name = "now a group".to_owned();
        let flip = CommitShape {
            committer: vec![1; 32],
            new_roster: Some(undirect),
            ..CommitShape::default()
        };
        assert!(check_commit(&two, &members, &flip).is_err());
    }
}
