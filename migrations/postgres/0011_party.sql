-- Screen-share parties (issue 16 item 2): rooms where `!live party on` shows
-- the widget's Share screen button. Absent: off. `notices` false: a share
-- gets only its stream state event, no message in the room. The sharers'
-- personal streams are ordinary mapped streams (slot 'party', owner = user).
CREATE TABLE party_rooms (
    room_id  TEXT PRIMARY KEY NOT NULL,
    notices  INTEGER NOT NULL DEFAULT 1
);
