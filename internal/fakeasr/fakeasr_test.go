package fakeasr_test

import (
	"reflect"
	"testing"

	sttv1 "github.com/voxmesh/voxmesh/gen/go/voxmesh/stt/v1"
	"github.com/voxmesh/voxmesh/internal/fakeasr"
)

// TestChunkingDoesNotMatter checks that any chunking gives the finals of
// ExpectedFinals, with one interim per InterimEvery chunks.
func TestChunkingDoesNotMatter(t *testing.T) {
	const rate, utteranceMs = 16000, 250
	pcm := make([]byte, 2*rate*9/10) // 0.9 s: three whole utterances and a part
	for i := range pcm {
		pcm[i] = byte(i * 7)
	}
	for _, chunk := range []int{2, 320, 3202, len(pcm)} {
		var finals []string
		interims := 0
		s := fakeasr.New(fakeasr.Config{Rate: rate, UtteranceMs: utteranceMs, InterimEvery: 3},
			func(r *sttv1.StreamingRecognizeResponse) error {
				if res := r.GetResult(); res != nil {
					if res.IsFinal {
						finals = append(finals, res.Alternatives[0].Transcript)
					} else {
						interims++
					}
				}
				return nil
			})
		chunks := 0
		for i := 0; i < len(pcm); i += chunk {
			if err := s.Feed(pcm[i:min(i+chunk, len(pcm))]); err != nil {
				t.Fatal(err)
			}
			chunks++
		}
		if err := s.Finish(); err != nil {
			t.Fatal(err)
		}
		if want := fakeasr.ExpectedFinals(pcm, rate, utteranceMs); !reflect.DeepEqual(finals, want) {
			t.Errorf("chunks of %d bytes: finals %v, want %v", chunk, finals, want)
		}
		if int(s.Finals()) != len(finals) || interims > chunks/3 {
			t.Errorf("chunks of %d bytes: Finals() %d, %d interims for %d chunks", chunk, s.Finals(), interims, chunks)
		}
	}
}
