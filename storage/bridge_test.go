package storage

import (
	"context"
	"fmt"
	"testing"
)

// TestStreamAfterMergesRoomDeletions: the room lifecycle records take their
// own stream positions and come back in order with the events, within the
// same bounds and limit; the backlog counts them by type and room.
func TestStreamAfterMergesRoomDeletions(t *testing.T) {
	db := openTestDB(t)
	ctx := context.Background()
	insert := func(room, typ string) StreamPos {
		var pos StreamPos
		if err := db.Write(ctx, func(tx *Tx) error {
			var err error
			if pos, err = tx.NextPos(ctx); err != nil {
				return err
			}
			return tx.InsertEvent(ctx, &Event{Pos: pos, EventID: fmt.Sprintf("$e%d", pos), RoomID: room, Type: typ, Sender: "@a:test",
				OriginTS: int64(1000 + pos), PDUJSON: []byte(`{}`), Unsigned: []byte(`{}`)})
		}); err != nil {
			t.Fatal(err)
		}
		return pos
	}
	start, err := db.CurrentPos(ctx)
	if err != nil {
		t.Fatal(err)
	}
	p1 := insert("!a:test", "m.room.message")
	var committed StreamPos
	p2, err := db.RecordRoomDeleted(ctx, "!b:test", "@admin:test", func(p StreamPos) { committed = p })
	if err != nil {
		t.Fatal(err)
	}
	if committed != p2 || p2 != p1+1 {
		t.Fatalf("deletion at %d (committed %d), after event %d", p2, committed, p1)
	}
	p3 := insert("!a:test", "m.room.message")

	all, err := db.StreamAfter(ctx, start, 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 3 || all[0].Pos != p1 || all[1].Pos != p2 || all[2].Pos != p3 {
		t.Fatalf("stream: %+v", all)
	}
	d := all[1]
	if d.Type != RoomDeletedType || d.RoomID != "!b:test" || d.Sender != "@admin:test" || d.OriginTS == 0 || d.EventID == "" {
		t.Errorf("deletion entry: %+v", d)
	}
	if got, _ := db.StreamAfter(ctx, start, 0, 2); len(got) != 2 || got[1].Pos != p2 {
		t.Errorf("limit 2: %+v", got)
	}
	if got, _ := db.StreamAfter(ctx, p1, p2, 10); len(got) != 1 || got[0].Pos != p2 {
		t.Errorf("bounded (%d, %d]: %+v", p1, p2, got)
	}
	if evs, _ := db.EventsAfter(ctx, start, 0, 10); len(evs) != 2 {
		t.Errorf("EventsAfter must not see the deletion: %+v", evs)
	}

	for _, c := range []struct {
		f    BacklogFilter
		n    int64
		from StreamPos
	}{
		{BacklogFilter{Types: []string{"m.room.message"}}, 2, start},
		{BacklogFilter{Types: []string{"m.room.message"}}, 1, p1},
		{BacklogFilter{Types: []string{RoomDeletedType}}, 1, start},
		{BacklogFilter{Types: []string{RoomDeletedType}, RoomIDs: []string{"!a:test"}}, 0, start},
		{BacklogFilter{Types: []string{"m.room.message"}, RoomIDs: []string{"!a:test"}}, 2, start},
		{BacklogFilter{Types: []string{"m.room.message"}, RoomIDs: []string{}}, 0, start},
		{BacklogFilter{}, 3, start},
	} {
		n, oldest, err := db.BridgeBacklog(ctx, c.from, c.f)
		if err != nil || n != c.n || (n > 0) != (oldest > 0) {
			t.Errorf("backlog %+v after %d: %d (oldest %d), want %d: %v", c.f, c.from, n, oldest, c.n, err)
		}
	}
}
