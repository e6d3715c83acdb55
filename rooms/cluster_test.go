package rooms

import (
	"testing"

	"github.com/agentspace/agentspace/storage"
)

// TestNotifierWatermark: in multi-instance mode Latest only moves over
// contiguous applied positions, and a user's wake-up waits for it.
func TestNotifierWatermark(t *testing.T) {
	n := NewNotifier(10)
	n.strict = true
	n.SetJoined("!r", "@u", true)
	ch := n.Listen("@u", 10)

	// A local commit at 12 (its hooks, then the commit observer) while 11,
	// another instance's, is not applied yet.
	n.Advance(12, Wake{Rooms: []string{"!r"}})
	n.mu.Lock()
	n.markAppliedLocked(12, 12)
	n.mu.Unlock()
	if got := n.Latest(); got != 10 {
		t.Fatalf("Latest = %d with 11 missing, want 10", got)
	}
	select {
	case <-ch:
		t.Fatal("woken before the watermark reached the change")
	default:
	}
	if !n.RoomChangedSince("!r", 11) {
		t.Fatal("the room's change marker must not wait for the watermark")
	}

	// 11 arrives: the watermark jumps over both and the wake-up is released.
	n.mu.Lock()
	n.markAppliedLocked(11, 11)
	n.mu.Unlock()
	if got := n.Latest(); got != 12 {
		t.Fatalf("Latest = %d, want 12", got)
	}
	select {
	case <-ch:
	default:
		t.Fatal("not woken once the watermark passed the change")
	}
	if c := n.Listen("@u", 11); !isClosed(c) {
		t.Fatal("Listen(11) must return at once: the user's stream is at 12")
	}

	// Out-of-order ranges merge.
	n.mu.Lock()
	n.markAppliedLocked(20, 25)
	n.markAppliedLocked(16, 19)
	n.markAppliedLocked(13, 15)
	n.mu.Unlock()
	if got := n.Latest(); got != 25 {
		t.Fatalf("Latest = %d after ranges 13-15, 16-19, 20-25, want 25", got)
	}
}

// TestNotifierSingleInstanceUnchanged: without multi-instance mode Advance
// moves Latest at once, as it always did.
func TestNotifierSingleInstanceUnchanged(t *testing.T) {
	n := NewNotifier(5)
	n.SetJoined("!r", "@u", true)
	ch := n.Listen("@u", 5)
	n.Advance(7, Wake{Rooms: []string{"!r"}})
	if n.Latest() != 7 || !isClosed(ch) {
		t.Fatalf("Latest = %d, woken %v; want 7, true", n.Latest(), isClosed(ch))
	}
}

// TestChangeRecordsWakeAndMembership: local hooks are recorded for the feed;
// a receipt does not mark its room's events changed.
func TestChangeRecordsWakeAndMembership(t *testing.T) {
	n := NewNotifier(0)
	n.strict = true
	n.rec = &Change{}
	n.memberPos = map[[2]string]storage.StreamPos{}
	n.SetMembership("!a", "@u", true, 1)
	n.Advance(1, Wake{Rooms: []string{"!a"}, Users: []string{"@u"}})
	n.Advance(2, Wake{Rooms: []string{"!b"}, ReceiptRooms: []string{"!b"}})
	c := n.rec
	if len(c.Members) != 1 || c.Members[0] != (MemberChange{Room: "!a", User: "@u", Joined: true, Pos: 1}) {
		t.Fatalf("members %v", c.Members)
	}
	if len(c.Events) != 1 || c.Events[0] != "!a" {
		t.Fatalf("rooms with new events %v, want [!a]", c.Events)
	}
	if len(c.Receipts) != 1 || len(c.Rooms) != 2 {
		t.Fatalf("receipts %v rooms %v", c.Receipts, c.Rooms)
	}
}

func isClosed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}
